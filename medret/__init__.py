"""medret: how much retrieval quality a quantized medical retriever loses, and what it gains."""

__version__ = "0.1.0"
