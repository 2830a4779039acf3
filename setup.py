"""rdbm_jax: the Residual Diffusion Bridge Model (Wang et al., CVPR 2026) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="rdbm_jax",
    version="0.1.0",
    description="Residual Diffusion Bridge Models for image restoration in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rdbm_jax", "rdbm_jax.*"]),
    install_requires=[
        # Upper bounds on the fast-moving libraries: below the next minor release after the
        # tested one (orbax-checkpoint 0.12.8, grain 0.2.18, jax 0.10.2, flax 0.12.8, optax 0.2.8).
        # Raise one only after the tests pass with it; orbax first (checkpoints.py works around it).
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "jax>=0.4.35,<0.11",
        "flax>=0.10,<0.13",
        "optax>=0.2.3,<0.3",
        "numpy>=1.26",
        "ml_collections>=1.0",
        "clu>=0.0.12",
        "absl-py>=2.0",
        "pillow>=10.0",
        "scipy>=1.10",
        "scikit-image>=0.22",  # ships the built-in demo photographs (skimage/data)
        "scikit-learn>=1.3",  # ships china.jpg / flower.jpg
        "matplotlib>=3.7",  # sweep plots, curves.png
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "tqdm>=4.66",  # progress bars of sample / eval / sweep
        "flatbuffers>=24.3",  # jax.export's (de)serialisation of --mode=export artifacts
        "etils[epath]>=1.5",  # rdbm_jax/runtime/paths.py: one path type for local and gs:// workdirs
        "fsspec>=2023.1",  # epath's object-store backend (and the tests' stand-in gs:// store)
    ],
    extras_require={
        # The README's test command: CPU-only and small (no torch); TensorBoard's own event reader
        # checks our event files. The PyTorch parity tests skip without torch.
        "test": ["pytest>=7", "pytest-xdist>=3.5", "tensorboard>=2.15",
                 # orbax's own store, written directly to damage a checkpoint on purpose
                 "tensorstore>=0.1.60"],
        # The PyTorch twins of the parity tests (CPU is enough; pip may pick a CUDA build of torch,
        # several GB): CI installs them after the README's test command (.ci/run).
        "twins": ["torch>=2.4", "torchvision>=0.19", "lpips>=0.1.4", "pytorch-fid>=0.3"],
        "tensorboard": ["tensorflow-cpu>=2.15"],
        # --mode=app's local web page (rdbm_jax/app.py); the core install does not need it.
        "app": ["gradio>=6.0,<7"],
        # Its browser test drives the system's Chromium (Debian's `chromium`, never a download).
        "app-test": ["playwright>=1.50,<2"],
        # gs:// workdirs and data folders: etils.epath reaches Google Cloud Storage through gcsfs.
        "gcs": ["gcsfs>=2023.1"],
    },
)
