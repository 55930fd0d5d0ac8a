from inference_optim_llm.cli import main

raise SystemExit(main())
