# syntax=docker/dockerfile:1
# The alerter image: a static Go binary on distroless, run as the nonroot user.
# Build from the repository root:
#   docker build -f deploy/docker/alerter.Dockerfile -t REGISTRY/emoflow/alerter:TAG .
# Checked here by deploy/helm's TestDockerfiles (no Docker engine runs on
# the development machines); not built here.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# go.work (made by scripts/setup.sh for the CPU build of gotch) is not in
# the context; alerter does not link gotch. No cgo: a static binary.
ENV GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOEXPERIMENT=jsonv2
RUN go build -trimpath -ldflags="-s -w" -o /out/alerter ./cmd/alerter

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=build /out/alerter /usr/local/bin/alerter
USER 65532:65532
EXPOSE 9103
ENTRYPOINT ["/usr/local/bin/alerter"]
