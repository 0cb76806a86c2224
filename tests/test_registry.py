import subprocess
import sys
import textwrap

import pytest

from bench.errors import ConfigError
from bench.retrieval import Request, Run
from bench.registry import get_params, make_retriever, register, registry


def test_builtin_baselines_registered():
    names = set(registry())
    assert {"bm25", "random", "popularity", "dense-text"} <= names


def test_make_retriever_rejects_unknown_param_with_hint():
    with pytest.raises(ConfigError, match="no parameter 'sed'.*Did you mean 'seed'"):
        make_retriever("random", {"sed": 1})
    with pytest.raises(ConfigError, match="unknown retriever 'bm52'.*Did you mean 'bm25'"):
        make_retriever("bm52")


def test_params_read_back():
    r = make_retriever("random", {"seed": 3})
    assert get_params(r)["seed"] == 3


def test_register_rejects_name_clash():
    @register("test-dummy-clash")
    class A:
        def fit(self, train):
            return self

    with pytest.raises(ValueError, match="already registered"):
        @register("test-dummy-clash")
        class B:
            pass


def test_entry_point_plugin_is_discovered(tmp_path):
    """A retriever in another distribution is found through the persrv_bench.retrievers group."""
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from bench.retrieval import Run

        class EchoRetriever:
            """Returns the stickers whose id equals the query."""
            def __init__(self, boost: float = 2.0):
                self.boost = boost
            def fit(self, train):
                self.ids = set(train.sticker_ids)
                return self
            def search(self, requests, k):
                return Run({r: [(r.query, self.boost)] if r.query in self.ids else []
                            for r in requests})
    '''))
    dist = tmp_path / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[persrv_bench.retrievers]\necho = my_plugin:EchoRetriever\n")
    code = textwrap.dedent('''
        import pandas as pd
        from bench.retrieval import Request, TrainView
        from bench.registry import make_retriever, registry
        assert "echo" in registry(), sorted(registry())
        r = make_retriever("echo", {"boost": 5.0})
        view = TrainView(stickers=pd.DataFrame({"sticker_id": ["a", "b"], "image": [None, None]}),
                         clicks=pd.DataFrame(columns=["user_id", "query", "sticker_id", "ts"]))
        run = r.fit(view).search([Request("u", "b")], 10)
        print(run[Request("u", "b")])
    ''')
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[('b', 5.0)]" in out.stdout
    listing = subprocess.run([sys.executable, "-m", "bench", "retrievers"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert "echo: Returns the stickers whose id equals the query." in listing.stdout
    assert "boost = 2.0" in listing.stdout


def test_run_roundtrip(tmp_path):
    run = Run({Request("u1", "hi"): [("a", 2.0), ("b", 1.0)], Request("u2", "yo"): []})
    run.save_parquet(tmp_path / "r.parquet")
    back = Run.load_parquet(tmp_path / "r.parquet")
    assert back[Request("u1", "hi")] == [("a", 2.0), ("b", 1.0)]
    run.save_trec(tmp_path / "r.trec", tag="x")
    assert (tmp_path / "r.trec").read_text().splitlines()[0] == "q0 Q0 a 1 2.0 x"
