# The two commands a newcomer runs (see README):  make demo   and   make test
# Both create .venv on first use; everything is installed from the package registries.

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo demo-quick demo-cluster test test-fast lint setup system-deps clean

$(BIN)/rtrec: pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# Exact versions from constraints.txt (pyproject.toml has ranges). CPU torch first: on
	# Linux the default torch wheel is a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	@touch $(BIN)/rtrec

setup: $(BIN)/rtrec

# redis-server (online store; the cluster profile's Redis Cluster nodes), Chromium (dashboard
# rendering tests), PostgreSQL (the cluster profile's MLflow backend store: initdb and
# postgres, Debian's postgresql package), nginx (the cluster profile's load balancer in front
# of the serving replicas) and Java (Spark) come from the system's packages.
APT_PKGS := redis-server chromium chromium-driver postgresql nginx
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || missing="$$missing nginx"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v java >/dev/null || echo "warning: no java on PATH; Spark needs Java 17"

demo: setup
	$(BIN)/rtrec demo $(ARGS)

demo-quick: setup
	$(BIN)/rtrec demo --quick $(ARGS)

# The same loop on the cluster profile's engines (Spark standalone, Airflow's scheduler,
# MLflow server, PostgreSQL, Redis Cluster, processors, replicas behind nginx), brought up
# if it is not and stopped at the end (ARGS=--keep-running leaves it up). Quick data.
demo-cluster: setup
	RTREC_CONFIG=$${RTREC_CONFIG:-infra/rtrec.local-cluster.yaml} \
	  $(BIN)/rtrec demo --profile cluster --quick $(ARGS)

# The import contracts (.importlinter: layers, stage APIs) first: seconds, and a broken
# architecture fails before the slow suite starts.
test: setup
	LINT_IMPORTS=$(BIN)/lint-imports .ci/lint-imports
	$(BIN)/pytest -q -m "not gpu" --timeout=900 --durations=40 $(ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not integration and not slow and not gpu" $(ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
