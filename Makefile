# clinflow: the two commands are `make demo` and `make test`; both set up what they need first.
.PHONY: setup demo test lint typecheck compile clean

setup:
	@scripts/setup.sh

demo: setup
	.venvs/platform/bin/clinflow demo

test: setup
	scripts/test.sh

lint: setup
	.venvs/platform/bin/ruff check .
	.venvs/platform/bin/ruff format --check .

typecheck: setup
	.venvs/platform/bin/mypy clinflow pipelines components serving

compile: setup
	.venvs/platform/bin/clinflow compile

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
