"""Bad input, generated: every defect is one line naming its place, and nothing is left behind.

Hypothesis draws a defect (a config key set to a wrong value, or a data file with a bad cell in
a random row) and runs the real ``rankengine train`` in-process, registering into a fresh SQLite
registry or writing ``-o DIR``. Whatever the defect, the command must fail with exit code != 0,
exactly one line on stderr that names the key, file, column or row at fault, no traceback, no
"internal error" (the CLI's last-resort wording for a bug), no registered version and no
artifact directory, complete or partial.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from rankengine.cli import cli

HEADER = "request_id,click,order,dwell,item_category,item_price"
ROWS = 48


def data_rows() -> list[list[str]]:
    rows = []
    for i in range(ROWS):
        click = int(i % 3 == 0)
        order = int(click and i % 2 == 0)
        rows.append([str(i // 4), str(click), str(order), f"{click * (i % 7) * 1.5:.1f}",
                     f"cat{i % 5}", f"{1 + i % 11:.2f}"])
    return rows


CONFIG = """\
[engine]
seed = 3

[data]
train = "train.csv"
valid_fraction = 0.25
group = "request_id"

[train]
epochs = 1
batch_size = 16
lr = 0.01
progress = false

[model]
backbone = {{ kind = "mmoe", experts = 2, expert_hidden = [8] }}
tower = {{ kind = "mlp", hidden = [4] }}
cascade = "esmm"

[tasks]
click = {{ label = "click" }}
order = {{ label = "order", after = "click" }}
dwell = {{ label = "dwell", type = "regression", after = "click" }}

[fusion]
kind = "weighted_product"
weights = {{ click = 1.0, order = 1.0 }}

[registry]
model = "{model}"

[[features]]
name = "item_category"
kind = "categorical"
dim = {dim}

[[features]]
name = "item_price"
kind = "numeric"
{extra}
"""


@dataclass
class Case:
    """One workspace: the config's substitutions, the data rows and what the error must name."""

    mentions: str
    model: str = "probe"
    dim: str = "4"
    extra: str = ""
    replace: tuple[str, str] | None = None
    rows: Callable[[list[list[str]]], None] | None = None
    raw_bytes: bytes | None = None
    #: the defect matters only when registering (the model name), not with -o DIR
    registers: bool = False

    def write(self, root: Path) -> Path:
        rows = data_rows()
        if self.rows:
            self.rows(rows)
        body = "\n".join([HEADER, *(",".join(r) for r in rows)]) + "\n"
        data = body.encode()
        if self.raw_bytes is not None:
            data = data.replace(b"cat1", self.raw_bytes, 1)
        (root / "train.csv").write_bytes(data)
        config = CONFIG.format(model=self.model, dim=self.dim, extra=self.extra)
        if self.replace:
            assert self.replace[0] in config, self.replace
            config = config.replace(*self.replace)
        (root / "engine.toml").write_text(config)
        return root / "engine.toml"


def _toml(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)


bad_numbers = st.sampled_from([math.inf, -math.inf, math.nan])


def config_cases() -> st.SearchStrategy[Case]:
    def key(old: str, new: str, mentions: str) -> Case:
        return Case(mentions=mentions, replace=(old, new))

    return st.one_of(
        st.integers(max_value=0).map(lambda n: key("epochs = 1", f"epochs = {n}", "train.epochs")),
        st.integers(max_value=0).map(
            lambda n: key("batch_size = 16", f"batch_size = {n}", "train.batch_size")),
        st.one_of(bad_numbers, st.floats(max_value=0.0, allow_nan=False)).map(
            lambda x: key("lr = 0.01", f"lr = {_toml(x)}", "train.lr")),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32, max_value=2**63 - 1))
        .map(lambda n: key("seed = 3", f"seed = {n}", "engine.seed")),
        st.one_of(st.integers(max_value=0), st.integers(min_value=257, max_value=10**6)).map(
            lambda n: key("seed = 3", f"seed = 3\nthreads = {n}", "engine.threads")),
        st.one_of(st.integers(max_value=0), st.integers(min_value=4097, max_value=10**12)).map(
            lambda n: Case(mentions="dim", dim=str(n))),
        st.integers(max_value=0).map(
            lambda n: key("hidden = [4]", f"hidden = [4, {n}]", "model.tower.hidden")),
        st.integers(min_value=3, max_value=1000).map(
            lambda k: key("experts = 2,", f"experts = 2, top_k = {k},", "model.backbone")),
        st.sampled_from(['label = []', 'label = ""']).map(
            lambda v: key('click = { label = "click" }', f"click = {{ {v} }}", "tasks.click")),
        st.sampled_from(["clik", "pay", "Click"]).map(
            lambda t: key('after = "click" }', f'after = "{t}" }}', t)),
        st.text(alphabet="abcdefgh_", min_size=3, max_size=8).map(
            lambda k: key("[train]\n", f"[train]\nx_{k} = 1\n", f"x_{k}")),
        st.sampled_from(["missing.csv", "nowhere/train.parquet"]).map(
            lambda f: key('train = "train.csv"', f'train = "{f}"', f)),
        st.sampled_from(["clik", "Order", "pay"]).map(lambda t: key(
            "weights = { click = 1.0,", f"weights = {{ {t} = 1.0,", t)),
        st.one_of(bad_numbers, st.floats(max_value=-1e-9, allow_nan=False)).map(lambda x: key(
            "order = 1.0 }", f"order = {_toml(x)} }}", "fusion.weights.order")),
        st.sampled_from([".", "..", "../up", "a/b", "a b", "CON", "x.", "-x", "", "é" * 101])
        .map(lambda m: Case(mentions="registry.model", model=m, registers=True)),
        st.sampled_from(["engine.toml", "train.csv"]).map(lambda f: key(
            "progress = false", f'progress = false\ncheckpoint_dir = "{f}"', "checkpoint_dir")),
        st.integers(min_value=4097, max_value=10**12).map(
            lambda n: key('kind = "categorical"\ndim', f'kind = "sequence"\nmax_len = {n}\ndim',
                          "max_len")),
        # issue #13, second pass: what a value cannot mean for its task, feature or folder
        st.sampled_from(["engine.toml", "train.csv/cache"]).map(lambda f: key(
            'group = "request_id"', f'group = "request_id"\ncache_dir = "{f}"', "cache_dir")),
        st.sampled_from(["0.001", "0.999"]).map(
            lambda f: key("valid_fraction = 0.25", f"valid_fraction = {f}", "valid_fraction")),
        st.just(key('type = "regression", after = "click" }',
                    'type = "regression", after = "click", loss = "bce" }', "tasks.dwell.loss")),
        st.just(key('click = { label = "click" }', 'click = { label = "click", loss = "log_mse" }',
                    "tasks.click.loss")),
        st.sampled_from(["auc:dwell", "rmse:click", "auc_cond:click"]).map(lambda m: key(
            "progress = false", f'progress = false\nearly_stopping = {{ metric = "{m}" }}',
            "train.early_stopping.metric")),
        st.just(key('click = { label = "click" }',
                    'click = { label = { column = "click", equals = [] } }',
                    "tasks.click.label.equals")),
        st.just(key('cascade = "esmm"', 'cascade = "esmm"\nbackbone_groups = []',
                    "model.backbone_groups")),
        st.just(key('kind = "categorical"\ndim', 'kind = "sequence"\nseparator = ""\ndim',
                    "separator")),
        st.just(Case(mentions="dwell", replace=(
            'label = "dwell", type = "regression"',
            'label = { column = "dwell", equals = [1] }, type = "regression"'))),
        st.just(key("[fusion]", '[loss.sample_weighting]\nkind = "column"\n'
                    'column = "item_category"\n\n[fusion]', "item_category")),
    )


def data_cases() -> st.SearchStrategy[Case]:
    def cell(column: int, value: str, mentions: str) -> Callable[[int], Case]:
        def make(row: int) -> Case:
            def edit(rows: list[list[str]]) -> None:
                rows[row][column] = value
            return Case(mentions=mentions, rows=edit)
        return make

    rows = st.integers(min_value=0, max_value=ROWS - 1)
    return st.one_of(
        st.tuples(rows, st.sampled_from(["inf", "-inf", "nan"])).map(
            lambda rv: cell(3, rv[1], "dwell")(rv[0])),
        st.tuples(rows, st.sampled_from(["inf", "1e400"])).map(
            lambda rv: cell(1, rv[1], "click")(rv[0])),
        rows.map(lambda r: cell(1, "yes", "click")(r)),
        st.tuples(rows, st.sampled_from(["inf", "-inf"])).map(
            lambda rv: cell(5, rv[1], "item_price")(rv[0])),
        st.sampled_from([b"c\xffat", b"\xe9t\xe9", b"\xc3"]).map(
            lambda b: Case(mentions="item_category", raw_bytes=b)),
        st.just(Case(mentions="item_price", replace=(
            'name = "item_price"\nkind = "numeric"',
            'name = "item_price"\nkind = "numeric"\ncolumn = "price"'))),
        # issue #13, second pass
        rows.map(lambda r: cell(0, "", "request_id")(r)),  # a row without a request id
        rows.map(lambda r: Case(mentions=f"line {r + 2}: expected 6 fields, found 7",
                                rows=lambda rs: rs[r].append("9"))),
        rows.map(lambda r: Case(mentions=f"line {r + 2}: expected 6 fields, found 5",
                                rows=lambda rs: rs[r].pop())),
        st.just(Case(mentions="train.csv: the file has no data rows", rows=list.clear)),
    )


def _registered_versions(db: Path) -> int:
    if not db.exists():
        return 0
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            tables = {r[0] for r in conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'table'"))}
            if "model_versions" not in tables:
                return 0
            return int(conn.execute(text("SELECT COUNT(*) FROM model_versions")).scalar_one())
    finally:
        engine.dispose()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=st.one_of(config_cases(), data_cases()), standalone=st.booleans())
def test_every_defect_is_one_line_and_leaves_nothing(case: Case, standalone: bool) -> None:
    standalone = standalone and not case.registers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = case.write(root)
        db = root / "registry.db"
        args = ["train", "-c", str(config), "--quiet"]
        args += ["-o", str(root / "out")] if standalone else ["--registry", f"sqlite:///{db}"]
        result = CliRunner().invoke(cli, args)

        assert result.exit_code != 0, result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        line = lines[0]
        assert line.startswith("Error: ") and "Traceback" not in result.output, line
        assert "internal error" not in line, line
        assert re.search(re.escape(case.mentions), line), (case.mentions, line)
        assert _registered_versions(db) == 0
        left = sorted(p.name for p in root.iterdir()
                      if p.name not in ("engine.toml", "train.csv", "registry.db",
                                        "registry.db-wal", "registry.db-shm"))
        empty_root = left == ["artifacts"] and not any((root / "artifacts").iterdir())
        assert left == [] or empty_root, left
