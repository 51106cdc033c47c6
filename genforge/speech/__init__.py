"""Speech: the text front end (normalize, sentences, phonemes) shared by speech data, models and pipelines."""
from .frontend import (PhonemeInventory, normalize, phonemize, sentences_to_phonemes, split_sentences,
                       text_to_ids)

__all__ = ["PhonemeInventory", "normalize", "phonemize", "sentences_to_phonemes", "split_sentences",
           "text_to_ids"]
