"""The Ollama API (`/api/...`): routes for the clients that speak only Ollama's protocol
(Open WebUI, Continue, the `ollama` Python and JavaScript libraries, LangChain's and
LlamaIndex's Ollama integrations), over every model of the manifest.

Translation only: generation goes through the one chat path every protocol shares
(`open_chat`), embeddings through the one embeddings path, and the model routes read the
manifest. Errors on these paths use Ollama's own shape (`ERROR_STYLE`: gateway/http/errors.py).

routes.py is the route list; translate.py the bodies onto the chat path; generate.py /api/chat and
/api/generate; embed.py the embeddings; models.py the model routes over the manifest.
"""
