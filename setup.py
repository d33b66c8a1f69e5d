from pathlib import Path

from setuptools import setup


setup(
    name="clustr_hf",
    version="0.1.0",
    description="ClusTR (arXiv 2208.13138) for Hugging Face transformers: content-clustered attention in a pyramid ViT",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=["clustr_hf"],
    package_data={"clustr_hf": ["model_card_template.md"]},
    python_requires=">=3.11",
    install_requires=[
        "torch>=2.6,<3",
        "torchvision>=0.21,<1",
        "transformers>=5.24,<6",
        "datasets>=4,<6",
        "accelerate>=1.1,<2",
        "safetensors>=0.8,<1",
        "evaluate>=0.4.6,<0.5",
        "huggingface_hub>=1.31,<3",
    ],
    extras_require={
        "dev": [
            "pytest>=8", "scikit-learn>=1.5", "scikit-image>=0.24", "matplotlib>=3.8", "tensorboard>=2.14",
            "onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20", "gradio>=6,<7", "gradio_client>=2,<3",
            "selenium>=4.20,<5",
            "parameterized>=0.9",  # transformers' shared tests (tests/test_transformers_common.py)
        ],
        "train": ["scikit-learn>=1.5", "tensorboard>=2.14"],
        "viz": ["matplotlib>=3.8"],
        "export": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
        "app": ["gradio>=6,<7", "scikit-image>=0.24"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
