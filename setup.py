"""edgefleet: compile models for small devices, run them offline, keep a fleet improving.

The top-level folders map into one import namespace (nothing generic lands in
site-packages): ``sdk/`` is ``edgefleet``, ``compiler/`` is ``edgefleet.compiler``,
``device_agent/`` is ``edgefleet.device_agent``, ``cloud_sync/`` is
``edgefleet.cloud_sync``.
"""

from __future__ import annotations

import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOTS = {
    "edgefleet": "sdk",
    "edgefleet.compiler": "compiler",
    "edgefleet.device_agent": "device_agent",
    "edgefleet.cloud_sync": "cloud_sync",
}


def _packages() -> list[str]:
    found: list[str] = []
    for package, folder in ROOTS.items():
        base = os.path.join(HERE, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
            if "__init__.py" in filenames:
                rel = os.path.relpath(dirpath, base)
                found.append(package if rel == "." else package + "." + rel.replace(os.sep, "."))
    return sorted(found)


def _version() -> str:
    with open(os.path.join(HERE, "sdk", "_version.py"), encoding="utf-8") as fh:
        match = re.search(r'__version__ = "([^"]+)"', fh.read())
    assert match
    return match.group(1)


DEVICE = [
    "numpy>=1.26",
    "ai-edge-litert>=1.2",
    "onnxruntime>=1.18",
    "cryptography>=42",
    "paho-mqtt>=2.0",
    "tuf>=7,<8",  # edgefleet.trust: TUF metadata (roles, thresholds, expiry, root rotation)
    "msgspec",  # the wire protocol's telemetry records (cloud_sync.wire.protocol), as the coordinator decodes them
    "bsdiff4",  # applying the bsdiff4 deltas a rollout offers a device that holds the previous version
]
COMPILER = [
    "tensorflow>=2.16",
    "tf_keras",
    "tensorflow-model-optimization>=0.8",
    "tf2onnx>=1.16",
    "onnx>=1.16",
    "onnxruntime>=1.18",
    "sympy",
    "scikit-learn",
    "matplotlib",
    "rich",
]
CLOUD = [
    "paho-mqtt>=2.0",
    "tuf>=7,<8",
    "sqlalchemy>=2.0",
    "fastapi",
    "uvicorn",
    "httpx",
    "bsdiff4",
    "psycopg[binary]",
    "rich",
    "jinja2",  # the dashboard's pages
    "prometheus-client",  # /metrics
    "msgspec",  # telemetry decode + validation
]
FEDERATED = ["flwr==1.41.*"]
S3 = ["boto3"]  # an S3-compatible bundle origin (cloud serve --origin-url s3://...); not in "all": optional
DEV = ["pytest", "hypothesis", "schemathesis", "ruff", "mypy", "scikit-learn", "matplotlib", "selenium"]

setup(
    name="edgefleet",
    version=_version(),
    description="Compile models for small devices, run them offline, keep a fleet improving.",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    package_dir=ROOTS,
    packages=_packages(),
    package_data={"edgefleet": ["py.typed"], "edgefleet.cloud_sync": ["dashboard/templates/*.html", "dashboard/static/*"]},
    install_requires=["numpy>=1.26", "cryptography>=42", "click>=8.2"],  # click: the edgefleet command
    extras_require={
        "device": DEVICE,
        "compiler": COMPILER,
        "cloud": CLOUD,
        "federated": FEDERATED,
        "s3": S3,
        "dev": DEV,
        "all": sorted(set(DEVICE + COMPILER + CLOUD + FEDERATED + DEV)),
    },
    entry_points={"console_scripts": ["edgefleet = edgefleet.cli:entry"]},
)
