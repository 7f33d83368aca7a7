"""Ray: stream workers as actors (`RayPool`) and joining or starting a cluster (`connect`).
The only package that imports Ray; the rules that use it live in fpnstream.runtime."""


def available() -> bool:
    """Whether Ray can be imported here (the GPU image of the bench has none)."""
    try:
        import ray  # noqa: F401 (only whether it imports)
    except ImportError:
        return False
    return True
