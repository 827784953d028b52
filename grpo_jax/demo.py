"""`make demo` entry point (placeholder until the trainer lands)."""


def main() -> None:
  print('grpo_jax demo: the trainer is not in place yet.')


if __name__ == '__main__':
  main()
