"""InternVL3.5 in PyTorch. `from internvl35 import InternVL, SamplingParams` for the Python API."""

__version__ = "0.1.0"
__all__ = ["InternVL", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import internvl35.config` stays light and the CLI starts fast.
    if name == "InternVL":
        from internvl35.api import InternVL

        return InternVL
    if name == "SamplingParams":
        from internvl35.engine.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'internvl35' has no attribute {name!r}")
