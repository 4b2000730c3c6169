"""``python -m roost_serving`` is the ``roost`` command."""

from roost_serving.cli import main

if __name__ == "__main__":
    main()
