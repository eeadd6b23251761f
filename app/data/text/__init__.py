"""How text is cut, per script: sentences, and the word units that masking takes whole."""

from app.data.text.sentences import split_sentences
from app.data.text.word_units import is_cjk, word_starts, words

__all__ = ["is_cjk", "split_sentences", "word_starts", "words"]
