.PHONY: run test lint format

# Brings the whole system up in the foreground: web, worker, beat, Flower, relay, mail catcher.
run:
	bin/dev

# Runs the whole test suite against the real services (what CI runs).
test:
	bin/test $(ARGS)

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
