from app_basic import main

main()
