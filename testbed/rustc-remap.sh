#!/bin/sh
# RUSTC_WORKSPACE_WRAPPER set by repro_env (testbed/image-lib.sh): the workspace's own
# crates get the checkout's path remapped to /src, and then the target dir to /target
# again (the last matching prefix wins; the target dir may lie inside the checkout).
# Only the workspace's crates: the dependencies' flags then do not name the checkout, so a
# build of the same sources from another path (testbed/reproducible.sh) reuses them.
exec "$@" "--remap-path-prefix=$CUC_REMAP_SRC=/src" "--remap-path-prefix=$CUC_REMAP_TARGET=/target"
