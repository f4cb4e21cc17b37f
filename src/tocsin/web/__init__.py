"""The web pages: the Tickets list, ticket detail, Report issue, the health board and webhook
deliveries, served by the daemon itself as server-rendered HTML (no external assets).

Pages read through the same store and monitor views as the API and write only through the same
store operations, so a page and the API follow one set of rules and answer the same errors.
"""
