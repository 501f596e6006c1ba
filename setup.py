from setuptools import find_packages, setup

setup(
    name="sd-interp",
    version="0.1.0",
    description="Interpolating between images with diffusion models (Wang & Golland 2023) in pure PyTorch: "
                "hand-written SD 2.1, ControlNet, OpenCLIP, DDIM and OpenPose",
    packages=find_packages(include=["ldm", "ldm.*", "interp", "interp.*", "pose"]) + ["ldm.catalog"],
    package_dir={"ldm.catalog": "weights"},  # the catalog (weights/ is data) travels with the package
    package_data={"ldm": ["data/bpe_simple_vocab_16e6.txt.gz"], "ldm.catalog": ["catalog.json"],
                  "interp.apps": ["studio.html"]},
    python_requires=">=3.10",
    # what the packages import, and nothing else (tests/test_requirements.py compares them)
    install_requires=[
        # before 2.5, scaled_dot_product_attention's math fallback kept float16 scores in float16, which
        # SD 2.1's attention overflows
        "torch>=2.5",
        "huggingface-hub>=0.20",
        "numpy>=1.24",
        "pillow>=9",
        "opencv-python-headless>=4.8,<5",
        "tqdm>=4.62",
    ],
    extras_require={
        # open_clip's model zoo, for GPU stacks only: on a CPU torch it pulls a CUDA torchvision that
        # replaces torch. Nothing in this package imports it.
        "openclip": ["open-clip-torch"],
        # setuptools and wheel: tests/test_install.py builds the package offline with them (setuptools before
        # 70.1 takes bdist_wheel from wheel); selenium drives Chromium in the studio's browser test (the browser
        # itself comes from the system: apt install chromium chromium-driver); safetensors: the tests read
        # their reference data with it (the package reads and writes the format itself, ldm/load/safetensors_io)
        "test": ["pytest", "setuptools", "wheel", "selenium", "safetensors>=0.4"],
    },
    entry_points={"console_scripts": [
        "txt2img = ldm.cli:txt2img_main",
        "img2img = ldm.cli:img2img_main",
        "pose-detect = pose.cli:main",
        "interpolate = interp.apps.interpolate:main",
        "interp-batch = interp.apps.batch:main",
        "interp-studio = interp.apps.interpolate:studio_main",
        "interp-eval = interp.apps.evaluate:main",
        "interp-retime = interp.apps.retime:main",
    ]},
)
