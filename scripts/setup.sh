#!/usr/bin/env bash
# Takes a machine with Python 3.11 to a working ldcache environment in ./.venv.
# Idempotent: a second run checks what is there and finishes in seconds.
#
# Options:
#   --browser             also install headless Chromium and its driver (Debian's chromium and
#                         chromium-driver) for the browser tests; without them those tests skip
#
# Environment knobs:
#   LDCACHE_PYTHON        interpreter for the venv (default: python3.11, then python3)
#   LDCACHE_TORCH         torch version (default 2.14.1); LDCACHE_TORCHVISION likewise (0.29.1)
#   LDCACHE_WHEEL_CACHE   where built mmcv wheels are kept (default ~/.cache/ldcache/wheels)
#   LDCACHE_SHARED_WHEELS folder of prebuilt wheels to try first (default ../shared/wheels)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv="$repo/.venv"
torch_version=${LDCACHE_TORCH:-2.14.1}
torchvision_version=${LDCACHE_TORCHVISION:-0.29.1}
mmcv_version=2.1.0
wheel_cache=${LDCACHE_WHEEL_CACHE:-$HOME/.cache/ldcache/wheels}
shared_wheels=${LDCACHE_SHARED_WHEELS:-$repo/../shared/wheels}
start=$SECONDS

say() { printf '\033[1m[setup %3ds]\033[0m %s\n' $((SECONDS - start)) "$*"; }

pick_python() {
    if [ -n "${LDCACHE_PYTHON:-}" ]; then echo "$LDCACHE_PYTHON"; return; fi
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null; then echo "$candidate"; return; fi
    done
    echo "setup: no python3.11 or python3 on PATH; install Python 3.11 first" >&2
    exit 1
}

ensure_venv() {
    if [ -x "$venv/bin/python" ]; then return; fi
    local py
    py=$(pick_python)
    say "creating virtualenv .venv with $($py --version)"
    "$py" -m venv "$venv"
}

pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }
vpy() { "$venv/bin/python" "$@"; }

# Runs a command with its output kept in a log file (.venv/<name>.log), shown only if it fails.
quietly() {
    local name=$1 log
    shift
    log="$venv/$name.log"
    if ! "$@" > "$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "setup: '$name' failed; the last lines of its log are above (whole log: $log)" >&2
        exit 1
    fi
}

ensure_build_tools() {
    if vpy -c 'import setuptools, wheel, sys; sys.exit(int(setuptools.__version__.split(".")[0]) >= 82)' 2>/dev/null; then
        return
    fi
    say "installing setuptools<82 and wheel (mmcv's setup.py and mmengine need pkg_resources)"
    quietly pip-build-tools pip install --upgrade pip "setuptools<82" wheel
}

ensure_torch() {
    if vpy - "$torch_version" "$torchvision_version" <<'PY' 2>/dev/null; then return; fi
import sys, torch, torchvision
from torchvision.ops import nms  # a CUDA torchvision with a CPU torch fails here
ok = torch.__version__.split("+")[0] == sys.argv[1] and torchvision.__version__.split("+")[0] == sys.argv[2]
sys.exit(0 if ok else 1)
PY
    say "installing torch==$torch_version and torchvision==$torchvision_version from the registry (about 3 GB, a few minutes)"
    # The registry's torchvision is built against the registry's torch: take both from there,
    # never the machine's local CPU-only torch wheel, which cannot load it.
    quietly pip-torch pip install --no-cache-dir "torch==$torch_version" "torchvision==$torchvision_version"
}

mmcv_has_ops() {
    vpy -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '$mmcv_version')" 2>/dev/null
}

# The built wheel only fits the torch and Python it was compiled against.
wheel_key() {
    vpy -c 'import sys, torch; v = torch.__version__.replace("+", "_"); print(f"torch-{v}-cp{sys.version_info.major}{sys.version_info.minor}")'
}

build_mmcv_wheel() {
    local dest=$1 work
    work=$(mktemp -d)
    say "building mmcv $mmcv_version with its CPU ops from source: 7 to 20 minutes on 2 cores (only once: the wheel is cached in $dest)"
    # mmcv's setup.py imports torch even to report its metadata: no build isolation here either.
    quietly mmcv-download pip download --no-deps --no-binary :all: --no-build-isolation --no-cache-dir -d "$work" "mmcv==$mmcv_version"
    local src="$work/mmcv-$mmcv_version"
    tar -xzf "$src.tar.gz" -C "$work" && [ -f "$src/setup.py" ] \
        || { echo "setup: could not unpack the mmcv $mmcv_version source package" >&2; exit 1; }
    # torch >= 2.14 headers refuse C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    # mmcv's setup.py imports these at build time; without build isolation they must be present.
    quietly pip-mmcv-build-deps pip install ninja packaging addict yapf
    # No build isolation: an isolated build cannot see torch and silently makes a wheel without ops.
    # Thousands of compiler and setuptools lines: they go to the log, shown if the build fails.
    say "compiling (log: $venv/mmcv-build.log; started $(date +%H:%M), expect it near $(date -d '+15 min' +%H:%M))"
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 CFLAGS=-g0 CXXFLAGS=-g0 MAX_JOBS=${MAX_JOBS:-2} \
        quietly mmcv-build "$venv/bin/python" -m pip wheel --no-build-isolation --no-deps --no-cache-dir -w "$dest" .)
    rm -rf "$work"
}

ensure_mmcv() {
    if mmcv_has_ops; then return; fi
    local key dest wheel
    key=$(wheel_key)
    dest="$wheel_cache/$key"
    mkdir -p "$dest"
    wheel=$(ls "$dest"/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n1 || true)
    # A prebuilt wheel is used only under the exact key it was compiled for.
    if [ -z "$wheel" ]; then
        local prebuilt
        prebuilt=$(ls "$shared_wheels/$key"/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n1 || true)
        if [ -n "$prebuilt" ]; then
            say "using the prebuilt mmcv wheel from $shared_wheels/$key"
            cp "$prebuilt" "$dest/"
            wheel="$dest/$(basename "$prebuilt")"
        fi
    fi
    if [ -z "$wheel" ]; then
        build_mmcv_wheel "$dest"
        wheel=$(ls "$dest"/mmcv-"$mmcv_version"-*.whl | head -n1)
    else
        say "installing cached mmcv wheel $(basename "$wheel") ($key)"
    fi
    # --no-cache-dir: pip would otherwise reuse a wheel it built against another torch.
    quietly pip-mmcv pip install --no-cache-dir --no-deps --force-reinstall "$wheel"
    quietly pip-mmengine pip install "mmengine==0.10.7" addict yapf opencv-python pyyaml packaging
    mmcv_has_ops || { echo "setup: mmcv $mmcv_version was installed but its compiled ops do not load" >&2; exit 1; }
}

ensure_project() {
    local stamp="$venv/.ldcache-setup-stamp" want
    want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && vpy -c 'import ldcache.cli, mmdet, zarr, kwcoco' 2>/dev/null; then
        return
    fi
    say "installing ldcache (editable) with mmdet, mmengine, zarr, dask, kwcoco and the test tools"
    # The build backend is chatty about editable installs: keep its output for when it fails.
    quietly pip-ldcache pip install -e ".[test]"
    echo "$want" > "$stamp"
}

have_browser() {
    { [ -x /usr/bin/chromium ] || command -v chromium >/dev/null; } && command -v chromedriver >/dev/null
}

# The browser tests drive Debian's chromium through its own chromedriver: selenium is never left to
# download a driver or a browser (this machine reaches PyPI and the Debian archive only). A browser
# that cannot be installed skips those tests; it never fails setup.
ensure_browser() {
    if have_browser; then return; fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        say "no headless Chromium and no root or apt-get to install it: the browser tests will be skipped" \
            "(install Debian's packages with \`sudo apt-get install chromium chromium-driver\`)"
        return
    fi
    say "installing Debian's chromium and chromium-driver for the browser tests (a minute or two)"
    # In subshells: quietly exits on a failure, which here must only skip the browser tests.
    if ! (quietly apt-update apt-get update -q) || ! (quietly apt-chromium env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends chromium chromium-driver); then
        say "apt-get could not install chromium and chromium-driver (its log is above): the browser tests will be skipped"
        return
    fi
    have_browser || say "apt-get installed chromium and chromium-driver, yet chromium or chromedriver is not on PATH:" \
        "the browser tests will be skipped"
}

main() {
    local browser=0
    for arg in "$@"; do
        case $arg in
            --browser) browser=1 ;;
            *) echo "setup: unknown option '$arg' (the one option is --browser)" >&2; exit 2 ;;
        esac
    done
    ensure_venv
    ensure_build_tools
    ensure_torch
    ensure_mmcv
    ensure_project
    if [ "$browser" -eq 1 ]; then ensure_browser; fi
    say "ready: $(vpy -c 'import torch, mmcv, mmdet, mmengine, zarr; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmengine {mmengine.__version__}, zarr {zarr.__version__}")')"
}

# Sourcing the script (to call one step by hand) defines the steps without running them.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
