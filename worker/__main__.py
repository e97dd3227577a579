"""``python -m worker``: the same as ``taskq worker``."""

from taskq.cli import main

if __name__ == "__main__":
    main(["worker", *__import__("sys").argv[1:]], prog_name="python -m worker")
