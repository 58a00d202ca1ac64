"""The static checks, split along their seams (see docs/architecture.md)."""
