async def test_it_opens_a_workflow_ticket_and_reads_it_back(api):
    body = {
        "source": "workflow",
        "subject": {"type": "device", "id": "d1", "name": "Door 1"},
        "kind": "door_ajar",
    }
    status, ticket = await api.call(
        "POST", "/api/v1/orgs/acme/tickets", token="acme-workflow", json=body
    )
    assert status == 201
    assert ticket["seq"] == 1
    status, same = await api.call("GET", "/api/v1/orgs/acme/tickets/1", token="acme-read")
    assert status == 200
    assert same["timeline"][0]["type"] == "opened"
