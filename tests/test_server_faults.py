"""VLLMServerEngine when its server misbehaves, against a stand-in server in a thread (the real
vLLM server's tests: tests/test_vllm_server.py): slow answers are reported and then taken, no
answer within `timeout_s` or a server gone stops the run with `EngineUnavailable`, a failed weight
push stops it too and leaves nothing behind, refused prompts and another model's shape are said."""

import json
import logging
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.rollout.engine import EngineUnavailable
from lit_posttrain.rollout.server import VLLMServerEngine


class StandIn(ThreadingHTTPServer):
    """Answers the routes the engine uses as vLLM's server does; `delay_s`, `push_status` and
    `completion_status` make it slow or failing, `root` is the served folder it reports."""

    daemon_threads = True
    delay_s, push_status, completion_status, root = 0.0, 200, 200, ""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.pushed: list[str] = []


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict | None = None) -> None:
        payload = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._answer(200, {"data": [{"id": "policy", "max_model_len": 64, "root": self.server.root}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/collective_rpc":
            folder = Path(body["kwargs"]["weights_path"])
            self.server.pushed.append(sorted(p.name for p in folder.iterdir()))
            self._answer(self.server.push_status, {"results": [None]})
        elif self.path == "/fail_pushes":  # for a test whose pushes come from other processes
            self.server.push_status = 500
            self._answer(200)
        elif self.path == "/reset_prefix_cache":
            self._answer(200)
        elif self.path == "/v1/completions":
            time.sleep(self.server.delay_s)
            choices = [{"index": i, "token_ids": [7, 2], "logprobs": {"token_logprobs": [-0.5, -0.25]}} for i in range(body["n"])]
            self._answer(self.server.completion_status, {"choices": choices} if self.server.completion_status == 200 else {"error": "bad prompt"})
        else:
            self._answer(404)


ENGINES: list[VLLMServerEngine] = []  # closed after each test: their push folders


@pytest.fixture
def stand_in():
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    for engine in ENGINES:
        engine.close()
    ENGINES.clear()


@pytest.fixture(scope="module")
def module():
    module = PostTrainingModule(model="tiny-random-llama", dtype="float32")
    module.configure_model()
    return module


def _engine(server: StandIn, module, **kwargs) -> VLLMServerEngine:
    engine = VLLMServerEngine(url=f"http://127.0.0.1:{server.server_address[1]}", max_new_tokens=4, **kwargs)
    ENGINES.append(engine)
    engine.setup(module.policy, module.tokenizer)
    return engine


def test_samples_come_back_as_a_rollout_and_the_push_folder_is_emptied(stand_in, module):
    engine = _engine(stand_in, module)
    rollout = engine.generate([[5, 6], [7]], n=3, seed=[1, 2])
    assert len(rollout) == 6 and rollout.group_B.tolist() == [0, 0, 0, 1, 1, 1]
    assert stand_in.pushed == [["model.safetensors"]]  # at setup, one whole file
    assert not any(engine._push_root.iterdir()), "each push is removed once the server took it"


def test_a_slow_server_is_reported_and_then_answered(stand_in, module, caplog):
    engine = _engine(stand_in, module, slow_after_s=0.3)
    stand_in.delay_s = 1.0
    with caplog.at_level(logging.WARNING, logger="lit_posttrain.rollout.server"):
        rollout = engine.generate([[5, 6]], n=2, seed=0)
    assert len(rollout) == 2
    assert any("1 of 1 requests to http://127.0.0.1" in r.message and "unanswered after" in r.message for r in caplog.records)


def test_no_answer_within_the_timeout_stops_the_run(stand_in, module):
    engine = _engine(stand_in, module, timeout_s=0.5)
    stand_in.delay_s = 2.0
    with pytest.raises(EngineUnavailable, match=r"no answer from the vLLM server at .* to POST /v1/completions \(timed out\)"):
        engine.generate([[5, 6]], n=2, seed=0)


def test_a_server_gone_mid_run_stops_sampling_and_pushing(stand_in, module):
    engine = _engine(stand_in, module)
    stand_in.shutdown()
    stand_in.server_close()
    with pytest.raises(EngineUnavailable, match="no answer from the vLLM server"):
        engine.generate([[5, 6]], n=2, seed=0)
    with pytest.raises(EngineUnavailable, match=r"pushing step 1's weights .* failed.*resume it from its checkpoint"):
        engine.sync_weights(module.policy)
    assert not any(engine._push_root.iterdir())


def test_a_push_the_server_fails_to_load_stops_the_run(stand_in, module):
    engine = _engine(stand_in, module)
    stand_in.push_status = 500
    with pytest.raises(EngineUnavailable, match=r"pushing step 1's weights .*HTTP 500"):
        engine.sync_weights(module.policy)
    assert not any(engine._push_root.iterdir())


def test_a_server_without_its_development_routes_is_said_at_setup(stand_in, module):
    stand_in.push_status = 404
    with pytest.raises(EngineUnavailable, match="VLLM_SERVER_DEV_MODE=1"):
        _engine(stand_in, module)


def test_a_refused_prompt_is_a_value_error_naming_the_server(stand_in, module):
    engine = _engine(stand_in, module)
    stand_in.completion_status = 400
    with pytest.raises(ValueError, match=r"the server at http://127\.0\.0\.1:\d+ refused a prompt: /v1/completions answered HTTP 400"):
        engine.generate([[5, 6]], n=2, seed=0)


def test_a_server_of_another_shape_is_refused_at_setup(stand_in, module, tmp_path):
    config = module.policy.config.to_dict() | {"vocab_size": 999, "num_hidden_layers": 7}
    (tmp_path / "config.json").write_text(json.dumps(config))
    stand_in.root = str(tmp_path)
    with pytest.raises(ValueError, match=r"another shape than the policy's: vocab_size 999 \(policy \d+\), num_hidden_layers 7 \(policy 2\)"):
        _engine(stand_in, module)


def test_settings_are_checked_at_construction():
    with pytest.raises(ValueError, match="url must start with http"):
        VLLMServerEngine(url="localhost:8000")
    with pytest.raises(ValueError, match="timeout_s and slow_after_s must be > 0"):
        VLLMServerEngine(timeout_s=0)


def _two_process_push(rank: int, port: int, stand_in_port: int, results) -> None:
    """One of two processes under a gloo group: set up an engine on the stand-in (a push that
    goes through), then push again after the test made the stand-in fail pushes."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    module = PostTrainingModule(model="tiny-random-llama", dtype="float32")
    module.configure_model()
    engine = VLLMServerEngine(url=f"http://127.0.0.1:{stand_in_port}", max_new_tokens=4)
    try:
        engine.setup(module.policy, module.tokenizer)
        results.put((rank, "ok"))
        dist.barrier()  # the test switches the stand-in to failing pushes meanwhile
        urllib.request.urlopen(f"http://127.0.0.1:{stand_in_port}/fail_pushes", data=b"{}") if rank == 0 else None
        dist.barrier()
        engine.sync_weights(module.policy)
        results.put((rank, "pushed"))
    except EngineUnavailable as err:
        results.put((rank, str(err)))
    finally:
        engine.close()
        dist.destroy_process_group()


def test_under_data_parallelism_process_0_pushes_and_every_process_hears_how_it_went(stand_in):
    """Two processes, one server: one push a step, process 0's, and a push that fails stops both
    processes, not only the one that pushed (the other would sample from weights the server may
    not hold, or wait for it forever)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results, port = context.Queue(), _free_port()
    processes = [context.Process(target=_two_process_push, args=(r, port, stand_in.server_address[1], results)) for r in (0, 1)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    for p in processes:
        if p.is_alive():  # hung (a collective one process never reached): the outcomes below say which
            p.kill()
    outcomes = [results.get(timeout=5) for _ in range(4)]
    assert sorted(o for o in outcomes if o[1] == "ok") == [(0, "ok"), (1, "ok")]
    assert len(stand_in.pushed) == 2, "process 0 pushes, alone: at setup, then the failing push"
    failed = dict(o for o in outcomes if o[1] != "ok")
    assert "pushing step 1's weights" in failed[0] and "HTTP 500" in failed[0]
    assert "process 0's weight push" in failed[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
