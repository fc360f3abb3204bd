#!/usr/bin/env bash
# Set up this machine and run the pipeline against the local lab, or the tests.
#   ./dev.sh demo   build the lab site, start the lab, deploy CT 457, run the acceptance suite
#   ./dev.sh test   lint, type-check and run every test (what CI runs)
#   ./dev.sh setup  only install what the two above need (Debian 12, as root)
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
DEMO_KEY=/var/lib/meridian-lab/pipeline/demo-master.key

setup() {
    [ "$(id -u)" = 0 ] || { echo "run as root (containers, mounts, apt)" >&2; exit 2; }
    # cloud-init is installed for its schema validator only: keep it from acting on this host.
    mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
    missing=""
    for p in $(sed -e 's/#.*//' setup/apt-packages.txt); do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        apt-get update -q
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    fi
    # Unprivileged containers map root to 100000..165535, as Proxmox does.
    for f in /etc/subuid /etc/subgid; do
        grep -q '^root:100000:65536$' "$f" 2>/dev/null || echo 'root:100000:65536' >> "$f"
    done
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e '.[dev]'
}

case "${1:-}" in
    setup) setup ;;
    demo)
        setup
        # The lab CT's master key: generated once and kept beside the lab site's state, so a
        # rerun deploys and checks the same key; `lab down` removes it with the container.
        if [ -z "${MERIDIAN_LAB_MASTER_KEY:-}" ]; then
            if [ ! -s "$DEMO_KEY" ]; then
                (umask 077; mkdir -p "$(dirname "$DEMO_KEY")"; "$VENV/bin/python" -c 'import secrets; print("sk-" + secrets.token_urlsafe(32))' > "$DEMO_KEY")
            fi
            MERIDIAN_LAB_MASTER_KEY="$(cat "$DEMO_KEY")"
        fi
        export MERIDIAN_LAB_MASTER_KEY
        "$VENV/bin/python" -m pipeline build --site sites/lab.yml --out build/lab
        "$VENV/bin/python" -m lab up
        "$VENV/bin/python" -m pipeline replace-ct --site sites/lab.yml --template build/lab --yes
        "$VENV/bin/pytest" acceptance/ --site sites/lab.yml -m image
        echo
        echo "The appliance runs in the lab. What you can do next:"
        "$VENV/bin/python" -m pipeline endpoints --site sites/lab.yml
        [ ! -s "$DEMO_KEY" ] || echo "  this demo keeps MERIDIAN_LAB_MASTER_KEY in $DEMO_KEY: export MERIDIAN_LAB_MASTER_KEY=\"\$(cat $DEMO_KEY)\""
        echo "  remove the lab (containers, volumes, bridge, server): $VENV/bin/python -m lab down"
        ;;
    test)
        setup
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"
        "$VENV/bin/pytest" "${@:2}"
        ;;
    *) sed -n '2,6p' "$0"; exit 2 ;;
esac
