from car.launch import main

raise SystemExit(main())
