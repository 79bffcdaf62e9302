"""The CPU engine's settings are chosen from the hardware (the flag reader injected)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jointopt.backends import ScriptedBackend
from jointopt.backends.cpu_engine import (
    CpuEngineSettings,
    choose_cpu_engine,
    cpu_list,
    parse_cpu_list,
    read_cpu_info,
)
from jointopt.backends.vllm_env import OWNED_ENV, cpu_env
from jointopt.errors import BackendError

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**20  # /proc/meminfo counts kB

# First blocks of /proc/cpuinfo of real machines (trimmed to the fields that matter).
ZEN3_AVX2 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC 7B13
cpu MHz		: 2450.000
flags		: fpu vme de pse tsc msr pae sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes

processor	: 1
flags		: fpu avx2 avx512_bf16
"""
ZEN4_BF16 = """processor	: 0
model name	: AMD EPYC 9R14
flags		: fpu sse sse2 fma avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16
"""
SKYLAKE_AVX512 = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags		: fpu sse sse2 fma avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
SAPPHIRE_AMX = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: fpu avx avx2 fma avx512f avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve bf16 i8mm
"""


def info(cpuinfo: str, cpus=(0, 1), mem_gib: float = 24):
    return read_cpu_info(cpuinfo=cpuinfo, meminfo=f"MemTotal:       {int(mem_gib * GIB)} kB\n",
                         cpus=cpus)


@pytest.mark.parametrize("text, dtype, isa", [
    (ZEN3_AVX2, "float32", "AVX2 CPU without BF16"),
    (ZEN4_BF16, "bfloat16", "AVX-512 CPU with BF16"),
    (SKYLAKE_AVX512, "float32", "AVX-512 CPU without BF16"),
    (SAPPHIRE_AMX, "bfloat16", "AMX CPU with BF16"),
    (GRAVITON3, "bfloat16", "NEON CPU with BF16"),
    ("", "float32", "no AVX2 CPU without BF16"),
])
def test_dtype_follows_the_cpu_flags(text, dtype, isa):
    choice = choose_cpu_engine(info(text))
    assert choice.dtype == dtype
    assert choice.cpu.describe() == isa
    assert choice.chosen_by["dtype"] == "hardware"


def test_only_the_first_processor_block_is_read():
    # processor 1 of ZEN3_AVX2 lists avx512_bf16: a reader that merged blocks would say bf16
    assert not info(ZEN3_AVX2).has_bf16
    assert info(ZEN3_AVX2).model_name == "AMD EPYC 7B13"
    assert info(ZEN3_AVX2).mhz == 2450.0


def test_the_log_line_says_dtype_cpu_threads_and_cache():
    line = choose_cpu_engine(info(ZEN3_AVX2)).describe()
    assert line == ("engine: float32 on AVX2 CPU without BF16; 2 threads bound to cores 0-1; "
                    "KV cache 2 GiB of 24 GiB")
    one = choose_cpu_engine(info(ZEN3_AVX2), CpuEngineSettings(threads=1)).describe()
    assert "1 thread bound to core 0;" in one and "(from the config: threads)" in one


@pytest.mark.parametrize("mem, kv", [(4, 1), (24, 2), (64, 6), (512, 8)])
def test_kv_cache_grows_with_memory_within_bounds(mem, kv):
    assert choose_cpu_engine(info(ZEN3_AVX2, mem_gib=mem)).kv_cache_gib == kv


def test_threads_use_the_process_affinity():
    choice = choose_cpu_engine(info(ZEN3_AVX2, cpus=(2, 3, 4, 6)))
    assert (choice.threads, choice.bind) == (4, "2-4,6")
    assert choice.env() == {"VLLM_CPU_OMP_THREADS_BIND": "2-4,6",
                            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
    two = choose_cpu_engine(info(ZEN3_AVX2, cpus=(2, 3, 4, 6)), CpuEngineSettings(threads=2))
    assert (two.threads, two.bind) == (2, "2-3")


def test_every_choice_can_be_overridden():
    settings = CpuEngineSettings(dtype="bfloat16", bind="1", kv_cache_gib=3)
    choice = choose_cpu_engine(info(ZEN3_AVX2), settings)
    assert (choice.dtype, choice.bind, choice.threads, choice.kv_cache_gib) == (
        "bfloat16", "1", 1, 3)
    assert set(choice.chosen_by.values()) == {"config"}
    # model.engine.dtype (vLLM's own keyword) wins over model.cpu.dtype
    assert choose_cpu_engine(info(ZEN4_BF16), settings, config_dtype="float32").dtype == "float32"
    nobind = choose_cpu_engine(info(ZEN3_AVX2), CpuEngineSettings(bind="nobind"))
    assert nobind.env()["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert "not bound" in nobind.describe()


@pytest.mark.parametrize("settings, field, value", [
    (dict(threads=3), "model.cpu.threads", "3"),
    (dict(bind="0-5"), "model.cpu.bind", "0-5"),
])
def test_impossible_settings_name_the_field(settings, field, value):
    with pytest.raises(BackendError) as err:
        choose_cpu_engine(info(ZEN3_AVX2), CpuEngineSettings(**settings))
    assert field in str(err.value) and value in str(err.value)


@pytest.mark.parametrize("settings, field", [
    (dict(threads=0), "model.cpu.threads"),
    (dict(kv_cache_gib=0), "model.cpu.kv_cache_gib"),
    (dict(dtype="int4"), "model.cpu.dtype"),
    (dict(bind="0-x"), "model.cpu.bind"),
    (dict(bind="3-1"), "model.cpu.bind"),
])
def test_bad_settings_fail_at_construction(settings, field):
    with pytest.raises(BackendError, match=field.replace(".", r"\.")):
        CpuEngineSettings(**settings)


def test_cpu_lists_round_trip():
    assert parse_cpu_list("0-2,5, 7-8") == (0, 1, 2, 5, 7, 8)
    assert cpu_list((8, 0, 1, 2, 5, 7)) == "0-2,5,7-8"


def test_user_environment_wins_but_jointopts_own_variables_are_replaced():
    choice = choose_cpu_engine(info(ZEN3_AVX2), CpuEngineSettings(threads=1))
    assert cpu_env(choice, environ={"VLLM_CPU_OMP_THREADS_BIND": "1"}).get(
        "VLLM_CPU_OMP_THREADS_BIND") is None
    # set by an earlier backend of the same process: not the user's, so replaced
    owned = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", OWNED_ENV: "VLLM_CPU_OMP_THREADS_BIND"}
    assert cpu_env(choice, environ=owned)["VLLM_CPU_OMP_THREADS_BIND"] == "0"


def test_config_carries_cpu_settings_and_refuses_unknown_keys(tmp_path):
    from jointopt.search.config import load_config
    from jointopt.errors import ConfigError

    cfg = load_config(ROOT / "experiments/quickstart.yaml",
                      {"model": {"cpu": {"threads": 1, "kv_cache_gib": 3}}})
    assert cfg.model.cpu.threads == 1 and cfg.model.cpu.dtype is None
    with pytest.raises(ConfigError, match="model.cpu"):
        load_config(ROOT / "experiments/quickstart.yaml", {"model": {"cpu": {"thread": 1}}})


class _RecordedEngine(ScriptedBackend):
    def engine_record(self):
        return {"engine_device": "cpu", "engine_dtype": "float32", "engine_threads": 2}


def test_study_records_the_engine_in_optuna_and_mlflow(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    from jointopt.search.config import load_config
    from jointopt.search.objective import ENGINE_ATTR
    from jointopt.search.study import run_study

    cfg = load_config(ROOT / "experiments/quickstart.yaml", {
        "output_dir": str(tmp_path / "run"), "optimizer": {"n_trials": 2}})
    result = run_study(cfg, backend=_RecordedEngine(lambda request, index, rng: "x"))
    storage = f"sqlite:///{tmp_path / 'run' / 'optuna.db'}"
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    assert study.user_attrs[ENGINE_ATTR]["engine_dtype"] == "float32"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    runs = client.search_runs(client.search_experiments()[0].experiment_id)
    tags = [r.data.tags for r in runs if "engine.dtype" in r.data.tags]
    assert tags and tags[0]["engine.dtype"] == "float32" and tags[0]["engine.threads"] == "2"


def _stat(cpu0_busy: int, cpu1_busy: int, ticks: int) -> str:
    # user nice system idle iowait irq softirq steal
    return (f"cpu  0 0 0 0 0 0 0 0\n"
            f"cpu0 {cpu0_busy} 0 0 {ticks - cpu0_busy} 0 0 0 0\n"
            f"cpu1 {cpu1_busy} 0 0 {ticks - cpu1_busy} 0 0 0 0\n")


def _self_stat(utime: int, stime: int) -> str:
    return f"42 (python) S 1 42 42 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0 1"


def test_other_load_counts_busy_cores_minus_our_own_use():
    from jointopt.backends.cpu_load import other_load

    snapshots = iter([
        {"/proc/stat": _stat(0, 0, 1000), "/proc/self/stat": _self_stat(10, 0)},
        # 100 ticks later: cpu0 fully busy, cpu1 40% busy, 20 ticks of it ours
        {"/proc/stat": _stat(100, 40, 1100), "/proc/self/stat": _self_stat(25, 5)},
    ])
    state = {}

    def read(path):
        if path == "/proc/stat":
            state.update(next(snapshots))
        return state[path]

    load = other_load((0, 1), read=read, sleep=lambda s: None)
    assert load == pytest.approx((140 - 20) / 200 * 2)


def test_busy_machine_warning_names_the_fix():
    from jointopt.backends.cpu_load import busy_machine_warning

    choice = choose_cpu_engine(info(ZEN3_AVX2))
    assert busy_machine_warning(choice, 0.2) is None
    text = busy_machine_warning(choice, 1.0)
    assert "1.0 of the 2 cores" in text and "move it off cores 0-1" in text
    wide = choose_cpu_engine(info(ZEN3_AVX2, cpus=range(8)))
    assert "model.cpu.threads: 7 or less" in busy_machine_warning(wide, 1.0)


def test_throughput_watch_warns_once_on_a_collapse():
    from jointopt.backends.cpu_load import ThroughputWatch

    choice = choose_cpu_engine(info(ZEN3_AVX2))
    watch = ThroughputWatch()
    assert watch.observe(6000, 20.0, choice) is None        # 300 tok/s: the best so far
    assert watch.observe(100, 10.0, choice) is None         # too small to judge
    assert watch.observe(6000, 30.0, choice) is None        # 200 tok/s: slower, not collapsed
    warning = watch.observe(6000, 100.0, choice)            # 60 tok/s
    assert warning and "60 tok/s from 300 tok/s" in warning and "move it off cores" in warning
    assert watch.observe(6000, 100.0, choice) is None       # said once


def test_a_busy_machine_gets_unpinned_passive_threads_unless_the_user_chose():
    from jointopt.backends.cpu_load import adapt_to_load

    choice = choose_cpu_engine(info(ZEN3_AVX2))
    assert adapt_to_load(choice, 0.3) is choice                      # idle enough: pinned
    busy = adapt_to_load(choice, 1.0)
    assert (busy.bind, busy.threads, busy.chosen_by["threads"]) == ("nobind", 2, "busy machine")
    env = busy.env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert (env["OMP_NUM_THREADS"], env["KMP_BLOCKTIME"]) == ("2", "0")
    assert "not bound, waiting passively (other processes keep the cores busy)" in \
        busy.describe()
    assert busy_machine_warning_for(busy) is None                    # nothing left to warn
    mine = choose_cpu_engine(info(ZEN3_AVX2), CpuEngineSettings(threads=2))
    assert adapt_to_load(mine, 1.0) is mine                          # the user's choice stays
    assert "OMP_NUM_THREADS" not in choice.env()                     # vLLM sets it when binding


def busy_machine_warning_for(choice):
    from jointopt.backends.cpu_load import busy_machine_warning

    return busy_machine_warning(choice, 1.0)


def test_the_users_exported_binding_is_measured_and_kept_an_earlier_backends_is_not(
        monkeypatch):
    from jointopt.backends import vllm_env

    measured = []
    monkeypatch.setattr(vllm_env, "other_load", lambda cpus: measured.append(cpus) or 1.0)
    environ = {k: v for k, v in os.environ.items() if k != vllm_env.OWNED_ENV}
    environ["VLLM_CPU_OMP_THREADS_BIND"] = "0"
    monkeypatch.setattr(os, "environ", environ)  # what the set-up exports stays in the test
    mine = vllm_env.setup_cpu_engine(None, None)
    assert (mine.bind, mine.chosen_by["threads"], measured[-1]) == ("0", "environment", (0,))
    environ[vllm_env.OWNED_ENV] = "VLLM_CPU_OMP_THREADS_BIND"  # as if jointopt had set it
    adapted = vllm_env.setup_cpu_engine(None, None)
    assert (adapted.bind, adapted.chosen_by["threads"]) == ("nobind", "busy machine")
    assert environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
