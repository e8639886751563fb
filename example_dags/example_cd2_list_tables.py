"""List the Canvas Data 2 tables of a namespace and fan out one task per table.

Needs an ``instructure`` connection named ``instructure_default``; to try it offline, start
the emulator (``python -m airflow_provider_instructure.emulator``) and point the connection
at it (see the README), or run ``make demo``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_instructure.operators.cd2 import GetCD2TableSchemaOperator, ListCD2TablesOperator

with DAG(
    dag_id="example_cd2_list_tables",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["example", "instructure"],
    params={"namespace": "canvas"},
) as dag:
    # [START howto_operator_list_cd2_tables]
    list_tables = ListCD2TablesOperator(
        task_id="list_tables",
        namespace="{{ params.namespace }}",
        exclude=["*_logs"],
    )
    # [END howto_operator_list_cd2_tables]

    # [START howto_operator_get_cd2_table_schema]
    schemas = GetCD2TableSchemaOperator.partial(task_id="get_schema", namespace="{{ params.namespace }}").expand(
        table=list_tables.output
    )
    # [END howto_operator_get_cd2_table_schema]

    @task
    def summarize(schemas: list[dict]) -> dict[str, int]:
        # index rather than iterate: the lazy XCom sequence then knows where it ends
        versions = [schemas[i]["version"] for i in range(len(schemas))]
        return {"tables": len(versions), "max_schema_version": max(versions)}

    summarize(schemas.output)


if __name__ == "__main__":
    dag.test()
