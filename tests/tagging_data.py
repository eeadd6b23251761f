"""Tiny tagged data sets for token-classification tests: English words or Chinese characters,
entities (PER, LOC) from fixed lists placed in template sentences, IOB2 tags."""

import json
import random
from pathlib import Path

ENGLISH = {
    "PER": ["Anna Berg", "Tom", "Maria Lopez", "Ken Ito", "Lea", "Omar Said Ali"],
    "LOC": ["Paris", "New York", "Oslo", "Lima", "Cape Town", "Rome"],
}
ENGLISH_TEMPLATES = ["{PER} flew to {LOC} today .", "In {LOC} , {PER} met {PER} .",
                     "the report from {LOC} was late", "{PER} said nothing ."]
CHINESE = {"PER": ["张伟", "李娜", "王小明", "陈静"], "LOC": ["北京", "上海", "广州", "西安市"]}
CHINESE_TEMPLATES = ["{PER}昨天去了{LOC}。", "在{LOC}，{PER}见到了{PER}。", "来自{LOC}的消息很晚",
                     "{PER}没有说话。"]


def tagged_sentence(rng: random.Random, language: str) -> tuple[list[str], list[str]]:
    """One sentence's tokens (words, or characters for Chinese) and IOB2 tags."""
    entities = ENGLISH if language == "en" else CHINESE
    template = rng.choice(ENGLISH_TEMPLATES if language == "en" else CHINESE_TEMPLATES)
    tokens, tags = [], []
    parts = template.replace("{", "\0{").replace("}", "}\0").split("\0")
    for part in parts:
        if part.startswith("{"):
            kind = part[1:-1]
            name = rng.choice(entities[kind])
            units = name.split() if language == "en" else list(name)
            tokens += units
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(units) - 1)
        else:
            units = part.split() if language == "en" else list(part)
            tokens += units
            tags += ["O"] * len(units)
    return tokens, tags


def write_conll(path: Path, sentences) -> Path:
    path.write_text("".join("".join(f"{t}\t{g}\n" for t, g in zip(*s, strict=True)) + "\n"
                            for s in sentences), encoding="utf-8")
    return path


def write_jsonl(path: Path, sentences) -> Path:
    path.write_text("".join(json.dumps({"tokens": t, "tags": g}, ensure_ascii=False) + "\n"
                            for t, g in sentences), encoding="utf-8")
    return path


def tagged_dir(out: Path, language: str = "en", train: int = 240, seed: int = 0,
               fmt: str = "conll") -> Path:
    """train.<fmt> and dev.<fmt> (a quarter the size) of synthetic tagged sentences."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    write = write_conll if fmt == "conll" else write_jsonl
    write(out / f"train.{fmt}", [tagged_sentence(rng, language) for _ in range(train)])
    write(out / f"dev.{fmt}", [tagged_sentence(rng, language) for _ in range(train // 4)])
    return out
