"""KServe model server for clinflow models."""
