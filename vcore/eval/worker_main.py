"""Entry point of a grading worker process: ``python -m vcore.eval.worker_main`` (see vcore/eval/workers.py)."""

from vcore.eval.workers import serve

if __name__ == "__main__":
    serve()
