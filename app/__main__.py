"""`python -m app [overrides]`: one fine-tuning run (see app.train)."""

from app.train import main

if __name__ == "__main__":
    main()
