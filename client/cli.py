def main() -> int:
    """Placeholder until the CI client lands."""
    return 2
