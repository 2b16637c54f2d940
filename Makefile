# The two commands of the README: `make demo` and `make test`. Both build the environment on first use.
RUN := env/run
PYTEST_ARGS ?=

.PHONY: demo test env lock shell bench clean-runs

demo:
	$(RUN) python -m collabfeat demo

test:
	$(RUN) python -m pytest $(PYTEST_ARGS)

env:
	$(RUN) --build

# Re-pin requirements.lock from env/requirements.in (resolves in a throw-away venv inside the environment).
lock:
	$(RUN) bash env/lock.sh

bench:
	$(RUN) python -m bench

shell:
	$(RUN) bash

clean-runs:
	rm -rf runs serving/models
