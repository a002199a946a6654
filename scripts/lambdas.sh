#!/usr/bin/env bash
# lambdas.sh OUTDIR [NAME...]: Lambda bootstrap zips (provided.al2023) for
# arm64 and x86_64 in OUTDIR/<arch>/<name>.zip. Default: every function in
# cmd/lambda. Used by `make lambdas` and by cloud/lambdas_test.go.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: lambdas.sh OUTDIR [NAME...]}
shift
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
	for d in cmd/lambda/*/; do names+=("$(basename "$d")"); done
fi
go=${GO:-go}
# LAMBDA_ARCHES narrows the architectures (cloud/compat builds only the host's).
for arch in ${LAMBDA_ARCHES:-arm64:arm64 x86_64:amd64}; do
	dir=$out/${arch%%:*}
	mkdir -p "$dir"
	bin=$(mktemp -d)
	trap 'rm -rf "$bin"' EXIT
	for n in "${names[@]}"; do
		GOOS=linux GOARCH=${arch##*:} CGO_ENABLED=0 $go build -tags lambda.norpc -trimpath -ldflags='-s -w' -o "$bin/$n" "./cmd/lambda/$n"
		$go run ./cloud/internal/lambdazip "$dir/$n.zip" "$bin/$n"
	done
	rm -rf "$bin"
done
