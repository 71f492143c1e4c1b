import aiocinder.exceptions
