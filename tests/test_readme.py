"""The README's commands run as a user runs them, so the README cannot go stale; its links hold.

Every command of README.md's ```bash blocks is either run (console scripts from the installed
environment, in a fresh folder, each `albert-train` with `debug=fast` and its own run folder) or
skipped by one of the rules in SKIP_RULES (network, cluster, GPU, servers, the test suite itself).
The fast tests count the runnable commands and check every relative link in README.md and docs/;
the slow ones run the commands in README order, so `experiments/<name>/<run>` in a later command
is the folder an earlier one wrote.
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_DATA, compose_config, shared_data

README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250

# What the README's commands may not do here, with the reason a skipped command gives. The first
# rule a command matches skips it; every other command runs.
SKIP_RULES = [
    (r"\bpip install\b", "installs packages (needs the network: PyPI)"),
    (r"\bhf download\b|hf://|kaggle://", "downloads a checkpoint (needs the network)"),
    (r"model\.preset=albert-base-v2\b", "needs the folder `hf download` writes (network)"),
    (r"submitit_slurm|\bsbatch\b|\bsrun\b|\bkubectl\b", "needs a cluster"),
    (r"^TF_CONFIG=|strategy=multi_worker", "needs several machines (TF_CONFIG)"),
    (r"strategy=(gpu|tpu)\b|strategy\.tpu_address", "needs a GPU or TPU"),
    (r"\bpython -m pytest\b", "the test suite itself (this test is part of it)"),
    (r"^(tensorboard|mlflow ui|tensorflow_model_server)\b|\bcurl\b", "starts or queries a server"),
]
# How many of the README's commands run here (the slow tests run them): a README that loses its
# runnable commands, or a rule that starts to skip them, fails the fast test below.
RUNNABLE = 14
COMMANDS = ("albert-train", "albert-evaluate", "albert-predict", "albert-report",
            "albert-tokenizer", "albert-prepare", "albert-bench", "printf")
# Caps appended to each command so that it takes seconds (conf/debug/fast.yaml for training).
CAPS = {
    "albert-train": ["debug=fast"],
    "albert-bench": ["debug=fast", "bench.windows=1", "bench.window_seconds=1",
                     "bench.matmul_seconds=0.2"],
    "albert-tokenizer": ["input_sentence_size=20000"],
    "albert-prepare": ["tokenizer.input_sentence_size=20000"],
}
# debug=fast's 16 tokens hold no two sentences of WikiText-2: pretraining runs get this length.
PRETRAINING_LENGTH = 64
# Optional packages a command needs (an extra the environment may not have), by a pattern.
PACKAGES = {r"logger=\S*mlflow": "mlflow", r"whole_word_segmenter=jieba": "jieba"}
RUN_PLACEHOLDER = re.compile(r"experiments/([\w.-]+)/<run>")
SWEEP_PLACEHOLDER = re.compile(r"experiments/([\w.-]+)/multirun/<timestamp>")
COMMAND_TIMEOUT_S = 1800


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of README.md's ```bash blocks: continued lines joined, comments dropped."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def skip_reason(command: str) -> str | None:
    """The reason of the first rule of SKIP_RULES that `command` matches, else None."""
    for pattern, reason in SKIP_RULES:
        if re.search(pattern, command):
            return reason
    return None


def split(command: str) -> list[str]:
    """The shell words of `command` (quotes removed, a trailing comment dropped, `>` its own)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def shell(words: list[str]) -> str:
    """`words` as one bash command line (operators as they are, every other word quoted)."""
    return " ".join(w if re.fullmatch(r"[;&|<>()]+", w) else shlex.quote(w) for w in words)


def overrides_of(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))


def run_name(words: list[str]) -> str:
    """The `name` a training command's run folder is under (`experiments/<name>/`), as conf/
    composes it: a `name=` override, else the search's or the experiment's, else train.yaml's."""
    overrides = overrides_of(words)
    if "name" in overrides:
        return overrides["name"]
    for group in ("hparams_search", "experiment"):
        if group in overrides:
            return yaml.safe_load((REPO / "conf" / group / f"{overrides[group]}.yaml").read_text())[
                "name"]
    return yaml.safe_load((REPO / "conf" / "train.yaml").read_text())["name"]


def composed(words: list[str]):
    """The config a training command composes (a sweep's first job; shared data in place)."""
    overrides = [w.replace("../shared/data", str(SHARED_DATA)) for w in words[1:]
                 if "=" in w and not w.startswith("-") and not w.startswith("hydra")]
    return compose_config(*[o.split(",")[0] if "[" not in o else o for o in overrides])


def require_shared_data(command: str, words: list[str]) -> None:
    """Skip (through conftest's `shared_data`) when a data set the command reads is absent."""
    for name in re.findall(r"\.\./shared/data/([\w.-]+)", command):
        shared_data(name)
    if words[0] == "albert-train" and "../shared/data" in command:
        # `paths.data_dir=../shared/data`: the recipe's data.dir is a folder of it.
        data_dir = Path(composed(words).data.dir)
        if data_dir.is_relative_to(SHARED_DATA) and data_dir != SHARED_DATA:
            shared_data(data_dir.relative_to(SHARED_DATA).parts[0])


def caps(words: list[str]) -> list[str]:
    """The caps appended to a command; pretraining keeps pairs of two sentences possible."""
    extra = list(CAPS.get(words[0], []))
    if words[0] == "albert-train" and composed(words).data.task == "pretraining":
        extra.append(f"data.sequence_length={PRETRAINING_LENGTH}")
    return extra


def test_readme_fits_on_a_screen():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it a front door"


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and code spans."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\[[^\]\n]*\]\(([^)\s]+)\)", text)


def test_relative_links_point_to_files():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # https://, mailto:, an anchor in the same page
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
    assert {t.split("#")[0] for t in links(README) if t.startswith("docs/")} >= {
        f"docs/{p.name}" for p in DOCS.glob("*.md")}, "README.md must link every docs page"


def test_readme_commands_are_runnable_or_skipped_by_a_rule():
    commands = readme_commands()
    runnable = [c for c in commands if skip_reason(c) is None]
    for command in runnable:
        assert split(command)[0] in COMMANDS, f"no rule runs or skips: {command}"
    assert len(runnable) == RUNNABLE, (
        f"README.md has {len(runnable)} commands that run offline, expected {RUNNABLE}:\n"
        + "\n".join(runnable))
    # Each training recipe of the README is among them.
    trained = " ".join(c for c in runnable if c.startswith("albert-train"))
    for recipe in ("data=tsv", "experiment=chnsenticorp", "experiment=msra_ner",
                   "experiment=pretrain_wikitext2", "export/hf", " -m ", "logger="):
        assert recipe in trained, recipe


# === Running them (slow: about a dozen tiny runs, each a fresh process) ===

RUNNABLE_COMMANDS = [c for c in readme_commands() if skip_reason(c) is None]


class Session:
    """The folder the commands run in, and the run folders they wrote, by `name`."""

    def __init__(self, root: Path):
        self.work = root / "work"
        self.work.mkdir()
        self.runs: dict[str, Path] = {}
        self.sweeps: dict[str, Path] = {}
        self.ran: list[str] = []
        self.missing: list[str] = []  # skipped: shared data, a package or a run absent
        self.env = dict(os.environ)
        self.env.pop("MLFLOW_TRACKING_URI", None)  # the default store, in the work folder
        # The installed console scripts, as a user's activated environment has them.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                            self.env.get("PATH", "")])


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("readme"))


def resolve(command: str, session: Session) -> str:
    """`command` with its run placeholders replaced by the folders earlier commands wrote."""

    def folder(found: dict[str, Path], kind: str):
        def replace(match):
            if match.group(1) not in found:
                pytest.skip(f"needs the {kind} of `{match.group(1)}` that an earlier README "
                            f"command writes, and none ran")
            return str(found[match.group(1)])
        return replace

    command = RUN_PLACEHOLDER.sub(folder(session.runs, "run"), command)
    command = SWEEP_PLACEHOLDER.sub(folder(session.sweeps, "sweep"), command)
    left = re.findall(r"<[\w -]+>", command)
    assert not left, f"placeholders no README command fills: {left} in {command}"
    return command


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(RUNNABLE_COMMANDS)))
def test_readme_command(session, index):
    command = RUNNABLE_COMMANDS[index]
    try:
        words = split(resolve(command, session))
        require_shared_data(command, words)
        for pattern, package in PACKAGES.items():
            if re.search(pattern, command) and importlib.util.find_spec(package) is None:
                pytest.skip(f"needs the {package} package, not installed here")
    except pytest.skip.Exception:
        session.missing.append(command)
        raise
    words = [w.replace("../shared/data", str(SHARED_DATA)) for w in words]
    words += caps(words)
    folder = None
    if words[0] == "albert-train":
        name = run_name(words)
        sweep = "-m" in words or "--multirun" in words
        found = session.sweeps if sweep else session.runs
        folder = session.work / "experiments" / name / ("multirun" if sweep else "") / str(index)
        words.append(f"hydra.{'sweep' if sweep else 'run'}.dir={folder}")
    done = subprocess.run(["bash", "-c", shell(words)], cwd=session.work, env=session.env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, (f"`{command}` exited {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    if folder is not None:  # every run (a sweep: every job) completed
        statuses = sorted(folder.glob("*/status.json" if sweep else "status.json"))
        assert statuses, f"`{command}` wrote no run folder at {folder}"
        for status in statuses:
            assert '"completed"' in status.read_text(), status.read_text()
        found[name] = folder
    session.ran.append(command)


@pytest.mark.slow
def test_readme_commands_all_ran(session):
    """Every runnable command ran, unless a shared data set it needs is absent here."""
    not_run = [c for c in RUNNABLE_COMMANDS if c not in session.ran + session.missing]
    assert len(session.ran) + len(session.missing) == RUNNABLE, f"did not run: {not_run}"
