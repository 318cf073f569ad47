#!/usr/bin/env bash
# Build the memoria-operator image from this checkout and push it to your own registry.
#   bash hack/publish-image.sh REPOSITORY [TAG]
# e.g. bash hack/publish-image.sh registry.example.com/platform/memoria 0.1.0
# Uses docker, or podman where there is no docker; log in to the registry first
# (`docker login registry.example.com`). Prints the helm --set flags that go with the image.
# BASE_IMAGE=... passes another base to the Dockerfile (default: python:3.11-slim-bookworm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $# -lt 1 || $# -gt 2 || $1 == -* ]]; then
  echo "usage: bash hack/publish-image.sh REPOSITORY [TAG]   (TAG defaults to the project version)" >&2
  exit 2
fi
repository=$1
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
tag=${2:-$version}
if [[ ! $repository =~ ^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$ && ! $repository =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]]; then
  echo "publish-image: '$repository' is not an image repository (e.g. registry.example.com/team/memoria)" >&2
  exit 2
fi
if [[ ! $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
  echo "publish-image: '$tag' is not an image tag (letters, digits, _ . -; at most 128)" >&2
  exit 2
fi

engine=""
for candidate in docker podman; do
  if command -v "$candidate" >/dev/null 2>&1; then engine=$candidate; break; fi
done
[[ -n $engine ]] || { echo "publish-image: needs docker or podman on PATH" >&2; exit 1; }

build_args=()
[[ -n ${BASE_IMAGE:-} ]] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
"$engine" build "${build_args[@]}" -t "$repository:$tag" .
"$engine" push "$repository:$tag"

cat <<TEXT

Pushed $repository:$tag. Install the chart with it (operator and regions use the same image):

  helm install memoria charts/memoria -n memoria-system --create-namespace \\
    --set image.repository=$repository --set image.tag=$tag
TEXT
