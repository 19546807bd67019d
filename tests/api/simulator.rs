//! The simulator seen from outside: CardTrader's documented shapes and quirks over real HTTP.
