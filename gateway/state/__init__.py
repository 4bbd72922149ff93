"""The state store: where stored responses and conversations live (issue 20).

`server.state` (environment `NEXA_STATE`) names it by URL, one backend per scheme:

- `sqlite:///path/state.db` (the default: `<nexa cache>/state.db`): survives restarts on one machine;
- `redis://[:password@]host:port/db`, `rediss://` with TLS: shared by several gateways (Redis or Valkey);
- `memory://`: this process only, forgotten at exit.

`${VAR}` in the URL is replaced by that environment variable (a password from a Secret), also
when the URL comes from `NEXA_STATE`. The URL shown anywhere (logs, /admin, errors) is
`display_url`, without credentials.

The contract is gateway/state/base.py, the backends one module each, and `open_store`
(gateway/state/urls.py) picks one by URL.
"""
