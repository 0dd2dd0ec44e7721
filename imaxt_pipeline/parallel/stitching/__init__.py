"""TODO docstring."""

from ._match import match_pairs, match_tiles

__all__ = ["match_pairs", "match_tiles"]
