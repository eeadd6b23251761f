"""Models: the ALBERT backbone, the fine-tuning classifier, the MLM+SOP pretrainer, FLOP counts."""
