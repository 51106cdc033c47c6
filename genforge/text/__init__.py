"""Text: tokenizers trained on a dataset's own text (tokenizer.py) and text encoders (encoders.py)."""
from .tokenizer import BOS, EOS, PAD, UNK, TextTokenizer, caption_texts, tokenizer_for

__all__ = ["BOS", "EOS", "PAD", "UNK", "TextTokenizer", "caption_texts", "tokenizer_for"]
