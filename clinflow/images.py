"""Container image references, built in one place and fixed at compile time.

Each image is built from one lock file (``locks/<env>.txt``), the same lock that
builds the matching local environment (``.venvs/<env>``). The tag is the project
version plus a short hash of the lock files, one tag for all images (so one
skaffold tag template builds them all), and a compiled pipeline spec records
exactly which dependency set ran. Never ``:latest``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from clinflow import __version__

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = "ghcr.io/clinflow"


@dataclass(frozen=True)
class ImageEnvironment:
    """One runtime environment: a container image and its local twin.

    Attributes:
        name: Environment name (``platform`` or ``tfx``).
        image_name: Repository name of the image, without registry or tag.
        python: Python version the image and the local environment use.
    """

    name: str
    image_name: str
    python: str

    @property
    def lock_file(self) -> Path:
        """The lock both the image and the local environment install from."""
        return REPO_ROOT / "locks" / f"{self.name}.txt"

    @property
    def local_env(self) -> Path:
        """The local virtual environment directory built from the lock."""
        return REPO_ROOT / ".venvs" / self.name

    def tag(self) -> str:
        """Returns the shared image tag (see ``image_tag``)."""
        return image_tag()

    def reference(self, registry: str = DEFAULT_REGISTRY) -> str:
        """Returns the full image reference, e.g. ``ghcr.io/clinflow/clinflow-tfx:0.1.0-ab12...``."""
        return f"{registry.rstrip('/')}/{self.image_name}:{self.tag()}"


def image_tag() -> str:
    """Returns ``<version>-<first 12 hex of sha256 over every lock file>``, the tag of every image."""
    digest = hashlib.sha256()
    for lock in sorted((REPO_ROOT / "locks").glob("*.txt")):
        digest.update(lock.name.encode() + b"\0" + lock.read_bytes())
    return f"{__version__}-{digest.hexdigest()[:12]}"


PLATFORM = ImageEnvironment(name="platform", image_name="clinflow-platform", python="3.11")
TFX = ImageEnvironment(name="tfx", image_name="clinflow-tfx", python="3.10")
ENVIRONMENTS: tuple[ImageEnvironment, ...] = (PLATFORM, TFX)


def environment_for_image(reference: str) -> ImageEnvironment | None:
    """Finds the environment whose image a reference names (any registry or tag).

    Args:
        reference: An image reference from a compiled spec.

    Returns:
        The matching environment, or None for a foreign image.
    """
    repository = reference.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return next((env for env in ENVIRONMENTS if env.image_name == repository), None)
