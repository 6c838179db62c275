#!/usr/bin/env bash
# Run the upstream CSI conformance suite (csi-sanity) against a local loam.
#
# Usage: csi-sanity/run.sh [mount|image|xfs|block|btrfs|device-mount|device-block] [extra csi-sanity args...]
#
# Modes: mount = filesystem volumes on a dir pool; image = filesystem volumes on
# an image pool (ext4); xfs = the same formatted xfs; block = raw block volumes
# on an image pool; btrfs = subvolumes on a btrfs pool (on a btrfs filesystem
# the script makes in an image file); device-mount = whole disks of a device
# pool (loop devices the script attaches), formatted ext4 on first stage;
# device-block = the same disks as raw block volumes. Each uses
# params-<mode>.yaml; the pools are declared in pools.toml (and
# pools-btrfs.toml, pools-device.toml).
#
# csi-sanity itself is NOT built or fetched here: install it separately from
# kubernetes-csi/csi-test (cmd/csi-sanity) and put it on PATH.
#
# Environment:
#   LOAM_BIN          loam binary to test (default: target/release/loam, then
#                     target/debug/loam; built with `cargo build --release` if
#                     neither exists)
#   LOAM_SANITY_SIZE  --csi.testvolumesize in bytes (default 1073741824 = 1 GiB);
#                     in the device modes also the size of every disk (a
#                     multiple of 512)
#   LOAM_SANITY_DISKS device modes: how many disks (loop devices) to attach
#                     (default 16)
#   RUST_LOG          loam log filter (default: info)
#   CSI_SANITY        csi-sanity command (default: csi-sanity from PATH)
#   LOAM_SANITY_KEEP  set to 1 to keep the temp dir (data dir, loam.log)
#
# Must run as root (the node service mounts).  Example:
#   sudo csi-sanity/run.sh mount --ginkgo.focus='Node Service'
set -euo pipefail

usage() {
    sed -n '4,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

MODE=mount
if [[ $# -gt 0 ]]; then
    case "$1" in
        mount | image | xfs | block | btrfs | device-mount | device-block)
            MODE="$1"
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) ;; # no mode given: everything is passed to csi-sanity
        *)
            echo "run.sh: unknown mode '$1' (expected mount, image, xfs, block, btrfs, device-mount or device-block)" >&2
            usage
            exit 2
            ;;
    esac
fi

PARAMS="$HERE/params-$MODE.yaml"
ACCESS=mount
[[ "$MODE" == block || "$MODE" == device-block ]] && ACCESS=block
if [[ "$MODE" == xfs ]] && ! command -v mkfs.xfs >/dev/null 2>&1; then
    echo "run.sh: mode xfs needs mkfs.xfs (Debian package xfsprogs)" >&2
    exit 2
fi
if [[ "$MODE" == btrfs ]] && ! command -v mkfs.btrfs >/dev/null 2>&1; then
    echo "run.sh: mode btrfs needs mkfs.btrfs (Debian package btrfs-progs)" >&2
    exit 2
fi
SIZE="${LOAM_SANITY_SIZE:-1073741824}"
if ! [[ "$SIZE" =~ ^[0-9]+$ ]]; then
    echo "run.sh: LOAM_SANITY_SIZE must be a number of bytes, got '$SIZE'" >&2
    exit 2
fi
DISKS="${LOAM_SANITY_DISKS:-16}"
if [[ "$MODE" == device-* ]]; then
    # A loop device's size is its backing file's, rounded down to 512-byte sectors, and csi-sanity asks for
    # exactly LOAM_SANITY_SIZE (required == limit), so a disk must be exactly that size.
    if ((10#$SIZE == 0 || 10#$SIZE % 512 != 0)); then
        echo "run.sh: mode $MODE needs LOAM_SANITY_SIZE to be a non-zero multiple of 512 (each disk is that size), got '$SIZE'" >&2
        exit 2
    fi
    if ! [[ "$DISKS" =~ ^[0-9]+$ ]] || ((10#$DISKS < 1)); then
        echo "run.sh: LOAM_SANITY_DISKS must be a number of disks (at least 1), got '$DISKS'" >&2
        exit 2
    fi
    if ! command -v losetup >/dev/null 2>&1; then
        echo "run.sh: mode $MODE needs losetup (Debian package mount)" >&2
        exit 2
    fi
    if [[ "$MODE" == device-mount ]] && ! command -v mkfs.ext4 >/dev/null 2>&1; then
        echo "run.sh: mode device-mount needs mkfs.ext4 (Debian package e2fsprogs)" >&2
        exit 2
    fi
fi

SANITY="${CSI_SANITY:-csi-sanity}"
if ! command -v "$SANITY" >/dev/null 2>&1; then
    cat >&2 <<EOF
run.sh: '$SANITY' not found on PATH.
Install csi-sanity from kubernetes-csi/csi-test (cmd/csi-sanity) and put it on
PATH (or point CSI_SANITY at it). Note that sudo may reset PATH: /usr/local/bin
is normally kept.
EOF
    exit 2
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "run.sh: must run as root (loam's node service mounts filesystems); try: sudo $0 $MODE" >&2
    exit 2
fi

# Locate (or build) the loam binary.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [[ -n "${LOAM_BIN:-}" ]]; then
    LOAM="$LOAM_BIN"
elif [[ -x "$TARGET_DIR/release/loam" ]]; then
    LOAM="$TARGET_DIR/release/loam"
elif [[ -x "$TARGET_DIR/debug/loam" ]]; then
    LOAM="$TARGET_DIR/debug/loam"
else
    if ! command -v cargo >/dev/null 2>&1; then
        echo "run.sh: no loam binary found and cargo is not on PATH (sudo may reset PATH); build first or set LOAM_BIN" >&2
        exit 2
    fi
    echo "run.sh: no loam binary found, running cargo build --release" >&2
    (cd "$ROOT" && cargo build --release)
    LOAM="$TARGET_DIR/release/loam"
fi
if [[ ! -x "$LOAM" ]]; then
    echo "run.sh: loam binary '$LOAM' is missing or not executable" >&2
    exit 2
fi

W="$(mktemp -d "${TMPDIR:-/tmp}/loam-sanity.XXXXXX")"
SOCK="$W/csi.sock"
LOG="$W/loam.log"
LOAM_PID=""
BTRFS_MNT=""
# The loop devices this script attached (device modes), detached on exit.
LOOP_DEVS=()

# Lists mount points at or below $W (from this process's mount table).
# shellcheck disable=SC2317
loops_under_w() {
    grep -l "^$W/" /sys/block/loop*/loop/backing_file 2>/dev/null | sed 's|/sys/block/\(loop[0-9]*\)/.*|/dev/\1|'
}

# (These functions only run from the EXIT trap; shellcheck < 0.10 flags them
# as unreachable.)
# shellcheck disable=SC2317
mounts_under_w() {
    awk -v w="$W" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo
}

# shellcheck disable=SC2317
cleanup() {
    set +e
    if [[ -n "$LOAM_PID" ]] && kill -0 "$LOAM_PID" 2>/dev/null; then
        kill -TERM "$LOAM_PID" 2>/dev/null
        # Give loam up to ~15s to shut down cleanly, then force it.
        for _ in $(seq 1 150); do
            kill -0 "$LOAM_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$LOAM_PID" 2>/dev/null; then
            echo "run.sh: loam (pid $LOAM_PID) did not exit after SIGTERM, sending SIGKILL" >&2
            kill -KILL "$LOAM_PID" 2>/dev/null
        fi
    fi
    if [[ -n "$LOAM_PID" ]]; then
        wait "$LOAM_PID" 2>/dev/null
    fi
    if [[ -n "$BTRFS_MNT" ]] && mountpoint -q "$BTRFS_MNT"; then
        umount "$BTRFS_MNT"
    fi
    # Detach the disks of the device modes. A device still mounted or held open is only marked to detach when
    # its last user lets go; the checks below report it.
    local dev
    for dev in "${LOOP_DEVS[@]}"; do
        losetup -d "$dev" 2>/dev/null || echo "run.sh: WARNING: could not detach $dev" >&2
    done
    local left loops
    left="$(mounts_under_w)"
    loops="$(loops_under_w)"
    if [[ -n "$loops" ]]; then
        echo "run.sh: WARNING: loop devices still attached to files under $W: ${loops//$'\n'/ }" >&2
        left="$left$loops"
    fi
    if [[ -n "$left" ]]; then
        {
            echo "run.sh: WARNING: mounts remain under $W; leaving it in place:"
            echo "  ${left//$'\n'/$'\n'  }"
            echo "run.sh: loam log: $LOG"
        } >&2
    elif [[ "${LOAM_SANITY_KEEP:-0}" == 1 ]]; then
        echo "run.sh: LOAM_SANITY_KEEP=1: keeping $W (loam log: $LOG)" >&2
    else
        rm -rf --one-file-system "$W"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The pools, inside the work dir: pools.toml names them relative to @W@.
sed "s|@W@|$W|g" "$HERE/pools.toml" >"$W/pools.toml"
if [[ "$MODE" == btrfs ]]; then
    # A btrfs filesystem of its own, in a sparse image file (mount -o loop detaches it at unmount).
    truncate -s 8G "$W/btrfs.img"
    mkfs.btrfs -q "$W/btrfs.img"
    BTRFS_MNT="$W/btrfs"
    mkdir -p "$BTRFS_MNT"
    mount -o loop "$W/btrfs.img" "$BTRFS_MNT"
    sed "s|@W@|$W|g" "$HERE/pools-btrfs.toml" >>"$W/pools.toml"
fi
if [[ "$MODE" == device-* ]]; then
    # Both device pools are declared; only this mode's discovery directory gets disks (the other stays empty).
    # Each disk is a loop device on a sparse image file of exactly SIZE bytes, linked by name from the discovery
    # directory.
    sed "s|@W@|$W|g" "$HERE/pools-device.toml" >>"$W/pools.toml"
    mkdir -p "$W/disks/fs" "$W/disks/block" "$W/disk-images"
    DISK_DIR="$W/disks/fs"
    [[ "$MODE" == device-block ]] && DISK_DIR="$W/disks/block"
    for i in $(seq 0 $((10#$DISKS - 1))); do
        truncate -s "$SIZE" "$W/disk-images/disk$i.img"
        dev="$(losetup --find --show "$W/disk-images/disk$i.img")"
        LOOP_DEVS+=("$dev")
        ln -s "$dev" "$DISK_DIR/disk$i"
    done
    echo "run.sh: $DISKS disks of $SIZE bytes in $DISK_DIR: ${LOOP_DEVS[*]}" >&2
fi

echo "run.sh: mode=$MODE loam=$LOAM workdir=$W" >&2
RUST_LOG="${RUST_LOG:-info}" "$LOAM" serve \
    --endpoint "unix://$SOCK" \
    --node-id sanity-node \
    --data-dir "$W/data" \
    --config "$W/pools.toml" \
    >"$LOG" 2>&1 &
LOAM_PID=$!

# Wait up to ~10s for the socket to appear.
for _ in $(seq 1 100); do
    [[ -S "$SOCK" ]] && break
    if ! kill -0 "$LOAM_PID" 2>/dev/null; then
        echo "run.sh: loam exited before creating $SOCK; log:" >&2
        tail -n 50 "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.1
done
if [[ ! -S "$SOCK" ]]; then
    echo "run.sh: loam did not create $SOCK within 10s; log:" >&2
    tail -n 50 "$LOG" >&2 || true
    exit 1
fi

# csi-sanity creates mnt/ and staging/ itself before each test (they must
# not exist beforehand) and removes them afterwards.
rc=0
"$SANITY" \
    --csi.endpoint="unix://$SOCK" \
    --csi.mountdir="$W/mnt" \
    --csi.stagingdir="$W/staging" \
    --csi.testvolumesize="$SIZE" \
    --csi.testvolumeparameters="$PARAMS" \
    --csi.testvolumeaccesstype="$ACCESS" \
    "$@" || rc=$?

if [[ "$rc" -ne 0 ]]; then
    echo "run.sh: csi-sanity failed (exit $rc); last lines of the loam log ($LOG):" >&2
    tail -n 100 "$LOG" >&2 || true
fi
exit "$rc"
