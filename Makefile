# Ebbtide: every task starts here.  `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: help setup deps-system deps-node images binaries node-binaries test lint unit integration e2e e2e-kind bench bench-payloads bench-latency bench-cpu bench-cpu-per-task bench-ramp bench-amqp-decode bench-gil-threads bench-memory bench-policy bench-operator bench-operator-e2e bench-operator-1000 bench-operator-failover bench-cluster demo helm-lint cluster-up cluster-down clean

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: deps-system $(STAMP) ## Install system packages (redis-server, rabbitmq-server, prometheus for promtool) and the Python venv

# Debian packages are installed only when missing, so a warm machine pays nothing.
deps-system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The real node and the image builds (make cluster-up, make images): Debian's containerd,
# runc, CNI plugins, podman and debootstrap; installed only when missing.
deps-node:
	@missing=""; \
	for pair in containerd:containerd runc:runc ctr:containerd podman:podman debootstrap:debootstrap \
	    iptables:iptables ipset:ipset gcc:gcc; do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	[ -x /usr/lib/cni/bridge ] || missing="$$missing containernetworking-plugins"; \
	[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$$(ls /usr/lib/*/libc.a 2>/dev/null)" ] || missing="$$missing libc6-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[operator,dev]"
	touch $(STAMP)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check worker-runtime operator tests bench e2e

unit: setup ## Unit tests (pure logic)
	$(PY) -m pytest -q tests/unit

integration: setup binaries ## Integration tests against real Redis / RabbitMQ on loopback (the operator's: and a real kube-apiserver + etcd)
	$(PY) -m pytest -q tests/integration

test: setup lint binaries ## The whole suite: ruff, unit, integration and chaos (real brokers, real faults), e2e (real pods on a one-node cluster)
	$(PY) -m pytest -q -rs tests
	$(MAKE) e2e

# kube-apiserver, kube-controller-manager, kubectl, etcd and helm, built once from Go
# modules into ~/.cache/ebbtide (versions pinned in e2e/versions.env). Without Go, outside
# CI, this only warns: the e2e suite then skips loudly, and the helm chart tests and the
# operator's integration tests (tests/support/apiserver.py) too.
binaries:
	@e2e/build-binaries.sh >/dev/null || { rc=$$?; if [ "$$rc" = 3 ] && [ "$${CI:-}" != true ]; then \
	  echo "binaries: WARNING: no Go toolchain, the e2e suite will be skipped" >&2; else exit $$rc; fi; }

# The node's kubelet, kube-proxy, kube-scheduler, CoreDNS and kube-router, built the same
# way (e2e/build-binaries.sh node) before the suite starts: on a cold cache the build takes
# longer than a test's timeout, so it must not happen inside the session fixture.
node-binaries:
	@e2e/build-binaries.sh node >/dev/null || { rc=$$?; if [ "$$rc" = 3 ] && [ "$${CI:-}" != true ]; then \
	  echo "node-binaries: WARNING: no Go toolchain, the e2e suite will be skipped" >&2; else exit $$rc; fi; }

e2e: setup deps-node images node-binaries ## e2e suite on the one-node cluster (real kubelet, containerd, images from docker/; see e2e/README.md)
	$(PY) -m pytest -q -rs e2e/tests

e2e-kind: setup ## The same e2e suite on a kind cluster (needs Docker; not exercised on Docker-less machines)
	scripts/e2e-kind.sh

images: setup deps-node ## Build the operator, runtime, e2e worker, Redis/RabbitMQ stand-in and pause images with podman; import them into the node
	PY=$(PY) scripts/build-images.sh

cluster-up: setup deps-node images node-binaries ## A one-node cluster (control plane, kube-scheduler, kubelet on containerd, kube-proxy, CoreDNS, kube-router), built once and cached
	$(PY) -m e2e.controlplane up --node

cluster-down: setup ## Stop the cluster: every process and container; the bridge and iptables chains removed
	$(PY) -m e2e.controlplane down --node

bench: setup ## Throughput benchmark: Ebbtide vs Celery vs Dramatiq on the same broker
	$(PY) bench/throughput.py

bench-payloads: setup ## Payload formats: stored size and send+run throughput, json vs msgpack, with/without zstd, small and 100 KiB, real Redis
	$(PY) bench/payloads.py

bench-latency: setup ## Latency benchmark: Redis behind toxiproxy (0.5, 2, 10 ms round trip), Ebbtide vs Dramatiq vs Celery in one run
	$(PY) bench/latency.py

# Each Redis node is capped to NODE_CPU cores (cgroup v1 cpu controller, root) so that the
# nodes, not the workers sharing the machine, saturate; 0 runs a master count uncapped.
NODE_CPU ?= 0.05,0
bench-cluster: setup ## Redis Cluster scale-out: one 6-shard queue's tasks/s over 1, 2, 3, 6 masters, nodes CPU-capped (NODE_CPU=0.05,0)
	$(PY) bench/cluster.py --node-cpu $(NODE_CPU)

bench-cpu: setup ## CPU-bound tasks: Ebbtide --processes 1 vs 2 beside Dramatiq -p 1 vs -p 2
	$(PY) bench/cpu.py

bench-cpu-per-task: setup ## Steady-state CPU per task (worker user/kernel, broker) for Ebbtide and Dramatiq on RabbitMQ: why a rate is what it is
	$(PY) bench/cpu_per_task.py

bench-ramp: setup ## The first half second of an Ebbtide worker's RabbitMQ run: tasks per 100 ms, the thread limit's and prefetch window's moves
	$(PY) bench/ramp.py --rounds 3

bench-amqp-decode: setup ## CPU per RabbitMQ task delivery read off the wire: pika's per-frame path vs the worker's one-pass reader
	$(PY) bench/amqp_decode.py

bench-gil-threads: setup ## N threads looping on one loopback INCR, no queue: the GIL's hand-offs against the thread count (why --thread-limit auto)
	$(PY) bench/gil_threads.py --repeat 2

bench-memory: setup ## Worker RSS per process and per 1,000 held tasks: Ebbtide vs Dramatiq vs Celery
	$(PY) bench/memory.py

bench-policy: setup ## Autoscaling policy benchmark: backlog time vs a KEDA-style baseline
	$(PY) bench/policy.py

bench-operator: setup binaries ## Operator tick timeliness: 200 TaskQueues on one operator's loops, real Redis, real kube-apiserver + etcd
	$(PY) bench/operator_ticks.py --taskqueues 200 --poll 1 --seconds 60

bench-operator-e2e: setup binaries ## The real operator on the real API server: 200 TaskQueues, tick timeliness, enqueue -> replicas p50/p99 from 0
	$(PY) bench/operator_e2e.py --taskqueues 200 --poll 5 --seconds 60

bench-operator-1000: setup binaries ## 1,000 TaskQueues on one operator, 5 s poll: tick lateness, activation, CPU and RSS per TaskQueue (an API server of its own, no node)
	$(PY) bench/operator_ticks.py --taskqueues 1000 --poll 5 --seconds 40 --warmup 20
	$(PY) bench/operator_e2e.py --own-apiserver --taskqueues 1000 --poll 5 --seconds 60

bench-operator-failover: setup binaries ## Two operators with kopf peering on the real API server: SIGKILL the active one, time the standby's takeover
	$(PY) bench/operator_failover.py

demo: setup deps-node images ## The demo on the one-node cluster: chart, operator pod, a burst, `kubectl get pods -w` and `kubectl get tq -w`; Ctrl-C tears down
	scripts/demo.sh

helm-lint: ## helm lint --strict the chart in both RBAC modes (helm from `make cluster-up`, or EBBTIDE_HELM)
	@helm=$$(scripts/find-helm.sh) && \
	$$helm lint --strict charts/ebbtide && \
	$$helm lint --strict charts/ebbtide --set 'watchNamespaces={team-a,team-b}'

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
