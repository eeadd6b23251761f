"""`albert-tokenizer`: train a SentencePiece model with ALBERT's special pieces on text files,
or a WordPiece vocabulary (`kind=wordpiece`, BERT's specials, as Chinese ALBERTs use).

    albert-tokenizer input='corpus/*.txt' vocab_size=16000
    -> experiments/tokenizer/<ts>/{spm.model, spm.vocab, report.json}
    albert-tokenizer input='corpus/*.txt' vocab_size=21128 kind=wordpiece
    -> experiments/tokenizer/<ts>/{vocab.txt, report.json}

Use it with `tokenizer.proto=<output>/spm.model` (or `tokenizer.kind=wordpiece
tokenizer.vocab=<output>/vocab.txt`) in `albert-train`.
"""

import logging
from pathlib import Path

from app.data.tokenizer import train_tokenizer
from app.runs.record import write_json
from app.runtime.console import command

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@command("tokenizer")
def main(cfg) -> None:
    """`albert-tokenizer input=<files> vocab_size=16000 [key=value ...]`."""
    output = Path(cfg.output)
    report = train_tokenizer(cfg.input, output, cfg.vocab_size, cfg.kind, cfg.model_type,
                             cfg.lowercase, cfg.character_coverage, cfg.input_sentence_size,
                             cfg.holdout_every)
    write_json(output / REPORT_FILE, report)
    log.info("Wrote %s (%s): %d pieces, %.3f pieces/word, word coverage %.4f on %d held-out "
             "sentences", report["model"], REPORT_FILE, report["vocab_size"],
             report["pieces_per_word"] or 0.0, report["word_coverage"] or 0.0,
             report["held_out_sentences"])


if __name__ == "__main__":
    main()
