"""Retriever models: transformer encoders with pooling, symmetric or query/document pairs."""

from medret.models.encoder import Retriever, TextEncoder, load_retriever, pick_device

__all__ = ["Retriever", "TextEncoder", "load_retriever", "pick_device"]
